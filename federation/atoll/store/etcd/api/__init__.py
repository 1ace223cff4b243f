"""Generated etcd protobuf modules (see atoll.protogen)."""
