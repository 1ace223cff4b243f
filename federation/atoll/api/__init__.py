"""The control plane's REST API (FastAPI; OpenAPI at /openapi.json, docs at /docs)."""

from atoll.api.app import ApiContext, build_app

__all__ = ["ApiContext", "build_app"]
