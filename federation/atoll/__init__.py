"""Atoll: multi-cluster federation control.

This package (``federation/atoll``) is the kernel and the global control plane:
the resource model (:mod:`atoll.model`), the store (:mod:`atoll.store`), the
sync protocol (:mod:`atoll.sync`), the reconcilers (:mod:`atoll.control`), the
REST API (:mod:`atoll.api`) and the CLI (:mod:`atoll.cli`). The cluster agent,
trust, DNS and gateway code live in their own source roots (DESIGN §2).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
