"""The cluster agent: reads its cluster's catalog, reports exports, receives imports (DESIGN §1)."""
