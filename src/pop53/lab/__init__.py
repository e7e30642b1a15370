"""The PoP lab: machines, a router and clients in network namespaces, and its failover runs."""
