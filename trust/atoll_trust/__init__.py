"""SPIFFE trust: identities, CAs, SVIDs, bundles, the Workload API (DESIGN §7)."""
