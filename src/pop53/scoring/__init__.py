"""Query scoring and prioritized processing (issue 13), the control plane's side.

The data plane (ext/scoring.pxi) classes every UDP query before any lookup and, under
overload, drops the worst classes first.  Here: the [scoring] settings (settings.py), the
known-resolver table read from a file and compiled into the flat structure the workers read
(known.py), and the glue that publishes it to a server's workers and retires the old one
(service.py).
"""
