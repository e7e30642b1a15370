"""Issue 14 point 9: a restart never serves stale data from the saved image.  The image is
reused only while the content (SHA-256) of every file read for it is unchanged: the master
files and every $INCLUDEd file.  Before, only the master file's mtime and size were checked, so
an edited $INCLUDE, or a same-size edit with the old mtime (a restore, a fast editor), served the
old data after a restart."""
from __future__ import annotations

import logging
import os

import dns.message
import pytest

from pop53 import config as cfgmod
from pop53.serve import zones as servermod
from pop53.serve.server import Server

from integ_support import make_query, start_with_retry, udp_exchange, udp_socket

MAIN = """$ORIGIN inc.example.
$TTL 300
@ SOA ns1 h 1 3600 600 86400 60
@ NS ns1
ns1 A 192.0.2.1
host A 192.0.2.10
$INCLUDE "{inc}"
"""


def _start(cfg) -> Server:
    return start_with_retry(lambda: Server(cfg))


def _address(s: Server, name: str) -> str:
    with udp_socket(s.addresses[0]) as sock:
        r = dns.message.from_wire(udp_exchange(sock, make_query(name, "A", qid=3)))
    return r.answer[0][0].address


@pytest.fixture(params=[False, True], ids=["in-process", "child-compile"])
def restart(request, tmp_path, monkeypatch, caplog):
    """restart() -> (a fresh Server over the same config and state dir, whether it served the
    saved image); every server is stopped at teardown."""
    if request.param:
        monkeypatch.setattr(servermod, "ISOLATE_BYTES", 0)
    caplog.set_level(logging.INFO, "pop53.server")
    cfg_doc = {"server": {"listen": ["127.0.0.1:0"], "workers": 1, "state": str(tmp_path / "state")},
               "zone": [{"name": "inc.example.", "file": str(tmp_path / "inc.example.zone")}]}
    servers = []

    def start():
        for s in servers:
            s.stop()
        caplog.clear()
        s = _start(cfgmod.from_dict(cfg_doc))
        servers.append(s)
        return s, "serving the saved image" in caplog.text

    yield start
    for s in servers:
        s.stop()


def _files(tmp_path, host="192.0.2.10", included="192.0.2.20"):
    inc = tmp_path / "included.zone"
    inc.write_text(f"incl A {included}\n")
    main = tmp_path / "inc.example.zone"
    main.write_text(MAIN.format(inc=inc).replace("192.0.2.10", host))
    return main, inc


def test_unchanged_files_reuse_the_saved_image(tmp_path, restart):
    _files(tmp_path)
    s, cached = restart()
    assert not cached and _address(s, "incl.inc.example.") == "192.0.2.20"
    s, cached = restart()
    assert cached and _address(s, "incl.inc.example.") == "192.0.2.20"


def test_an_edited_include_is_seen_after_a_restart(tmp_path, restart):
    main, inc = _files(tmp_path)
    restart()
    st = os.stat(main)
    inc.write_text("incl A 192.0.2.21\n")      # the master file is untouched
    assert os.stat(main).st_mtime_ns == st.st_mtime_ns
    s, cached = restart()
    assert not cached
    assert _address(s, "incl.inc.example.") == "192.0.2.21"


def test_a_same_size_edit_with_the_old_mtime_is_seen(tmp_path, restart):
    main, _ = _files(tmp_path)
    restart()
    st = os.stat(main)
    main.write_text(main.read_text().replace("192.0.2.10", "192.0.2.11"))   # same size
    os.utime(main, ns=(st.st_atime_ns, st.st_mtime_ns))                   # and the old mtime
    assert os.stat(main).st_size == st.st_size
    s, cached = restart()
    assert not cached
    assert _address(s, "host.inc.example.") == "192.0.2.11"


def test_a_removed_include_is_not_served_from_the_image(tmp_path, restart):
    _, inc = _files(tmp_path)
    restart()
    inc.unlink()
    s, cached = restart()
    assert not cached
    # the zone no longer loads: SERVFAIL stand-in (issue 14 point 1), never the stale data
    assert "cannot read included file" in s.zone_failed["inc.example."]
