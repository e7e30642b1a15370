"""DNSSEC, control-plane side: the proof index the compiler writes for signed zones (index.py)
and the signature checks of `pop53 check` (check.py).  The data plane's half is ext/dnssec.pxi."""
