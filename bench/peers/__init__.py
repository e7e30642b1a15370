"""dnsperf against NSD, Knot DNS, BIND, PowerDNS, pop53 and a pure-Python server.

Run ``python -m bench.peers`` (full, ~20 minutes) or ``python -m bench.peers --quick`` (smoke
test, about a minute).  See docs/bench.md.
"""
