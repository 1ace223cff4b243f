"""The Celery application and its broker configuration."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from celery import Celery

from atoll.errors import InvalidError

__all__ = ["RUN_DRILL", "make_celery", "parse_broker"]

RUN_DRILL = "atoll.run_drill"


def parse_broker(url: str) -> tuple[str, dict[str, object]]:
    """Celery broker URL and transport options for an Atoll broker URL."""
    parsed = urlparse(url)
    if parsed.scheme in ("redis", "rediss"):
        # a message whose worker vanished becomes visible again after this long
        return url, {"visibility_timeout": 60}
    if parsed.scheme == "filesystem":
        if not parsed.path.startswith("/"):
            raise InvalidError(
                f"broker {url!r}: filesystem:// needs an absolute directory, "
                "e.g. filesystem:///var/lib/atoll/broker",
                field="broker",
            )
        queue = Path(parsed.path)
        for sub in ("queue", "processed", "control"):
            (queue / sub).mkdir(parents=True, exist_ok=True)
        return "filesystem://", {
            "data_folder_in": str(queue / "queue"),
            "data_folder_out": str(queue / "queue"),
            "processed_folder": str(queue / "processed"),
            # kombu otherwise writes its exchange files to ./control in the cwd
            "control_folder": str(queue / "control"),
            "store_processed": False,
        }
    raise InvalidError(
        f"broker {url!r}: expected redis://host:port/db or filesystem:///abs/dir",
        field="broker",
    )


def make_celery(broker: str) -> Celery:
    url, options = parse_broker(broker)
    app = Celery("atoll", broker=url, set_as_current=False)
    app.conf.update(
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    return app
