"""serve/zonesplice.unchanged: a zone's files are compared by content, but a file whose stat is
the one seen (settled) at its last hash is not read again.  A same-size edit with its mtime set
back, an edited $INCLUDE and a file not settled yet when hashed are all still seen."""
from __future__ import annotations

import os
import time
from types import SimpleNamespace

from pop53.serve import zonesplice
from pop53.zone.zonefile import file_digests

ZONE = ("$ORIGIN t.\n$TTL 300\n@ IN SOA ns1 h 1 3600 600 86400 300\n@ IN NS ns1\n"
        "ns1 IN A 192.0.2.1\n$INCLUDE inc.zone\n")


def _zs(master, zone_dir):
    return SimpleNamespace(files={"t.": file_digests(master, zone_dir)}, file_stats={})


def test_stat_cache_sees_edits(tmp_path, monkeypatch):
    master, inc = tmp_path / "t.zone", tmp_path / "inc.zone"
    master.write_text(ZONE)
    inc.write_text("www IN A 192.0.2.2\n")
    zs = _zs(master, str(tmp_path))
    # hashed just after a write: not settled, so not trusted by its stat
    assert zonesplice.unchanged(zs, "t.", str(master), str(tmp_path))
    assert zs.file_stats == {}
    monkeypatch.setattr(zonesplice, "SETTLED", 0.0)
    assert zonesplice.unchanged(zs, "t.", str(master), str(tmp_path))
    assert "t." in zs.file_stats
    # trusted now: a read would fail, the stat answers
    real = zonesplice.file_digests
    monkeypatch.setattr(zonesplice, "file_digests", lambda *a: {})
    assert zonesplice.unchanged(zs, "t.", str(master), str(tmp_path))
    monkeypatch.setattr(zonesplice, "file_digests", real)
    # a same-size edit of the $INCLUDEd file with its mtime put back: its ctime moved
    st = inc.stat()
    time.sleep(0.02)
    inc.write_text("www IN A 192.0.2.3\n")
    os.utime(inc, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not zonesplice.unchanged(zs, "t.", str(master), str(tmp_path))
    # another zone directory resolves $INCLUDE elsewhere: hashed again
    zs = _zs(master, str(tmp_path))
    assert zonesplice.unchanged(zs, "t.", str(master), str(tmp_path))
    assert not zonesplice.unchanged(zs, "t.", str(master), "/nonexistent")
