"""ECMP: router and kernel multipath hash models, the reuseport worker selector, and the lab
that verifies both against the kernel."""
