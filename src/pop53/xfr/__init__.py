"""Zone transfers: the protocol (AXFR/IXFR in and out, NOTIFY, TSIG, refusals), the zone store
and journal, the per-zone refresh state machine, the image publisher and the secondary wiring."""
