"""East-west gateways: SNI passthrough, SPIFFE-authorized termination, egress (DESIGN §1, §7)."""
