"""Federated authoritative DNS with GSLB strategies (DESIGN §6)."""
