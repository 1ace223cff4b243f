"""Test helpers that ship with the package: launchers for real servers (etcd, redis), fakes for unit tests."""
