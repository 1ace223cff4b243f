"""Prometheus metrics of the cluster agent."""

from prometheus_client import Gauge

EXPORTS = Gauge("atoll_agent_exports", "ServiceExports the agent currently reports")
IMPORTS = Gauge("atoll_agent_imports", "ServiceImports the agent currently holds")
