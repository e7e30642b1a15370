"""Anycast: service routes (the only pyroute2 importer), BIRD, etcd suspension slots, the
monitoring agent and the staleness file it reads."""
