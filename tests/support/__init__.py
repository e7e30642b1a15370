"""Shared test support for pop53's test suites.

``refservers`` starts real reference DNS servers (Knot, NSD, BIND) on loopback for differential,
interop and benchmark tests.  Import as ``from tests.support import refservers`` with the
repository root on ``sys.path`` (``python -m pytest`` from the root puts it there; the
``conftest.py`` of a suite that uses it may insert it explicitly).
"""
