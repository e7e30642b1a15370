"""The data plane under AddressSanitizer + UndefinedBehaviorSanitizer.

Copies the working tree to a temporary directory (the repository and its git state are left
alone), builds the extension there with the project's one switch, POP53_SANITIZE=1 (setup.py:
-fsanitize=address,undefined, -O0, Cython boundscheck), and replays in a subprocess with
libasan preloaded: the BIND corpus (as sent and with QR cleared), every decision-table case,
the fuzz seeds, and a few thousand seeded random mutations and random byte strings, over UDP
and TCP limits.  Any sanitizer report fails the test.  A first subprocess overflows a heap
block on purpose to prove that a report would be seen at all.
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import dns.message
import pytest

from .test_decision_table import CASES
from .wirekit import CORPUS, EXAMPLE_ZONE, REPO, query

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

Z_ZONE = REPO / "tests" / "fuzz" / "zones" / "z.zone"
CHAIN_ZONE = Path(__file__).resolve().parent / "zones" / "chain.example.org.zone"
N_RANDOM = 4000
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                   "SUMMARY: UndefinedBehaviorSanitizer", "SUMMARY: AddressSanitizer")

CHILD = r"""
import pickle, sys
src, packets_file, zones = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, src)
import pop53
from pop53 import _core
assert _core.__file__.startswith(src), _core.__file__
image = pop53.compile_zones(zones)
responders = [pop53.Responder(), pop53.Responder(identity="ns-san", edns_max=4096),
              pop53.Responder(lenient_trailing=True, chaos=False, nsid=False)]
packets = pickle.load(open(packets_file, "rb"))
n = replies = 0
rl = _core.RateLimiter(1, slip=1, table_size=1024)     # response rate limiting reads replies
cookie_responder = pop53.Responder(identity="ns-san", cookie_secret=bytes(range(16)),
                                   cookie_secret_previous=bytes(16))
sa = b"\x02\x00\x14\xe9\xc0\x00\x02\x01" + bytes(20)
for i, wire in enumerate(packets):
    for tcp in (False, True):
        r = responders[i % len(responders)]
        act, reply = _core.answer(image.view, wire, r, tcp)
        reply2 = pop53.answer(image, wire, ("127.0.0.1", 5300), tcp=tcp, responder=r)
        assert reply == reply2
        n += 1
        replies += reply is not None
        if reply is not None and not tcp:
            rl.account(sa, reply, i & 3, edns=bool(i & 1))
    if len(wire) <= 65535:
        rl.account(sa, wire, i & 3, edns=True)       # any bytes where a reply would be
        rl.classify(wire)
    for client in (("192.0.2.1", 53), ("2001:db8::1", 53)):    # server cookies (RFC 9018)
        pop53.answer(image, wire, client, tcp=bool(i & 1), responder=cookie_responder)
    _core.answer(None, wire, responders[0], False)     # no image loaded yet
print("REPLAYED", n, replies, flush=True)
"""

SELF_CHECK = r"""
import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
p = libc.malloc(16)
ctypes.memset(p, 0, 32)      # 16 bytes past the block: ASan must say heap-buffer-overflow
print("NOT DETECTED", flush=True)
"""


def _libasan() -> str | None:
    cc = shutil.which("gcc")
    if cc is None:
        return None
    out = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True,
                         timeout=30).stdout.strip()
    return out if os.path.isabs(out) and os.path.exists(out) else None


def _packets() -> list[bytes]:
    rnd = random.Random(0x5EED53)
    corpus = [p.read_bytes() for p in sorted(CORPUS.glob("*.pkt"))]
    assert len(corpus) == 300
    as_queries = [w[:2] + bytes([w[2] & 0x7F]) + w[3:] for w in corpus if len(w) >= 12]
    table = [c.wire for c in CASES]
    valid = []
    for qname in ("www.example.com", "WwW.ExAmPlE.cOm", "web.example.com", "x.apps.example.com",
                  "a.sub.example.com", "nx.example.com", "sz80.z", "many.z", "chain1.z",
                  "loop1.z", "tocut.z", "x.dn.z", "x.d1.example.org", "x.y.d3.example.org"):
        for qtype in ("A", "AAAA", "TXT", "ANY", "NS", "MX", "SOA", "DS"):
            for edns, payload in ((None, 0), (0, 512), (0, 1232), (0, 4096)):
                valid.append(dns.message.make_query(qname, qtype, use_edns=edns,
                                                    payload=payload).to_wire())
    seeds = as_queries + table + valid
    mutated = []
    for _ in range(N_RANDOM):
        b = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(1, 6)):
            op = rnd.randrange(5)
            if not b:
                break
            i = rnd.randrange(len(b))
            if op == 0:
                b[i] ^= 1 << rnd.randrange(8)
            elif op == 1:
                b[i] = rnd.randrange(256)
            elif op == 2:
                b.insert(i, rnd.randrange(256))
            elif op == 3:
                del b[i]
            else:
                del b[i:]
        if len(b) >= 3 and rnd.random() < 0.8:
            b[2] &= 0x7F            # mostly queries, so the parser goes deep
        mutated.append(bytes(b))
    noise = [rnd.randbytes(rnd.randrange(0, 600)) for _ in range(N_RANDOM // 4)]
    headed = [struct.pack("!HHHHHH", rnd.randrange(65536), 0x0100, 1, rnd.randrange(3),
                          rnd.randrange(3), rnd.randrange(4)) + rnd.randbytes(rnd.randrange(300))
              for _ in range(N_RANDOM // 4)]
    big = [query("many.z") + b"\x00" * 65000, b"\x00" * 65535, b"\x00" * 65536]
    return corpus + as_queries + table + valid + mutated + noise + headed + big


def _run(cmd, env, cwd, timeout):
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def sanitized_tree(tmp_path_factory):
    libasan = _libasan()
    if libasan is None:
        pytest.skip("libasan is not available (gcc -print-file-name=libasan.so found no file); "
                    "install gcc's libasan to run the sanitizer build")
    root = tmp_path_factory.mktemp("sanitize") / "repo"
    shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(
        ".git", "build", "*.so", "_core.c", "__pycache__", ".pytest_cache", ".hypothesis",
        ".benchmarks", "*.egg-info", "*.html", "*.img", "results"))
    env = dict(os.environ, POP53_SANITIZE="1")
    env.pop("LD_PRELOAD", None)
    build = _run([sys.executable, "setup.py", "build_ext", "--inplace"], env, root, 480)
    assert build.returncode == 0, f"sanitizer build failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}"
    so = list((root / "src" / "pop53").glob("_core*.so"))
    assert so, "build produced no extension"
    # the switch really did what it says: the extension links the sanitizer runtimes
    ldd = subprocess.run(["ldd", str(so[0])], capture_output=True, text=True, timeout=30).stdout
    assert "libasan" in ldd and "libubsan" in ldd, ldd
    return root, libasan


def _sanitizer_env(libasan: str) -> dict:
    env = dict(os.environ)
    env.update(LD_PRELOAD=libasan,
               ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87",
               PYTHONDONTWRITEBYTECODE="1", PYTHONHASHSEED="0")
    env.pop("PYTHONPATH", None)
    return env


def test_sanitizer_sees_a_deliberate_overflow(sanitized_tree, tmp_path):
    """Guard: with this environment, a heap overflow in the process is reported (so the
    replay below passing means something)."""
    _root, libasan = sanitized_tree
    script = tmp_path / "overflow.py"
    script.write_text(SELF_CHECK)
    r = _run([sys.executable, str(script)], _sanitizer_env(libasan), tmp_path, 120)
    assert "heap-buffer-overflow" in r.stderr, r.stderr[-2000:]
    assert "NOT DETECTED" not in r.stdout and r.returncode != 0


def test_replay_under_sanitizers(sanitized_tree, tmp_path):
    root, libasan = sanitized_tree
    packets = _packets()
    pfile = tmp_path / "packets.pickle"
    pfile.write_bytes(pickle.dumps(packets))
    script = tmp_path / "replay.py"
    script.write_text(CHILD)
    zones = [str(EXAMPLE_ZONE), str(Z_ZONE), str(CHAIN_ZONE)]
    r = _run([sys.executable, str(script), str(root / "src"), str(pfile), *zones],
             _sanitizer_env(libasan), tmp_path, 480)
    reports = [m for m in SANITIZER_MARKS if m in r.stderr]
    assert not reports, f"sanitizer report:\n{r.stderr[-6000:]}"
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("REPLAYED")]
    assert line, r.stdout
    _, n, replies = line[0].split()
    assert int(n) == 2 * len(packets) and int(replies) > len(packets) // 2


CHILD_TCP = r"""
import pickle, random, socket, struct, sys, time
src, packets_file, zone = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, src)
from pop53 import _core
assert _core.__file__.startswith(src), _core.__file__
import pop53.config as cfgmod
from pop53.serve.server import Server
import dns.message

cfg = cfgmod.from_dict({"server": {
    "listen": ["127.0.0.1:0"], "workers": 1, "tcp_workers": 2, "tcp_max_connections": 8,
    "tcp_max_per_ip": 0, "tcp_max_queries": 40, "tcp_write_timeout": 0.5,
    # under ASan on a loaded machine a pipelined message can take longer than 0.5 s to come
    # in whole
    "tcp_message_timeout": 2.0, "tcp_idle_timeout": 2.0},
    "zone": [{"name": "example.com.", "file": zone}]}, file="<sanitize>")
server = Server(cfg)
server.start()
addr = server.addresses[0]
packets = pickle.load(open(packets_file, "rb"))
rnd = random.Random(53)
frame = lambda w: struct.pack("!H", len(w)) + w
q = dns.message.make_query("www.example.com.", "A").to_wire()
big = dns.message.make_query("example.com.", "ANY").to_wire()

def conn(rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(addr)
    return s

def send(s, data, piece=65536):
    # the server may close first (query limit, timeouts): that is its right, not an error
    try:
        for i in range(0, len(data), piece):
            s.sendall(data[i:i + piece])
        s.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        pass

def drain(s):
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()

# pipelined corpus packets in odd-sized pieces, then a half-close
for start in range(0, len(packets), 200):
    data = b"".join(frame(p[:65535]) for p in packets[start:start + 200])
    s = conn()
    send(s, data, 997)
    drain(s)
# lying and partial length prefixes, resets in the middle of a message
for tail in (b"\xff\xff" + bytes(100), b"\x00", b"\x00\x00", b"\x00\x05ab", frame(q)[:7]):
    s = conn(); send(s, tail); drain(s)
    s = conn(); s.sendall(tail)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); s.close()
# a reader that never reads (write timeout), and the query limit with pipelined queries
hog = conn(4096); hog.setblocking(False)
try:
    hog.send(frame(big) * 3000)
except BlockingIOError:
    pass
s = conn(); send(s, frame(q) * 60); drain(s)
# more connections than slots, some silent (eviction, busy timeout)
held = [conn() for _ in range(12)]
for h in held[::2]:
    h.send(b"\x00")
time.sleep(3.0)                      # past the message and idle timeouts
for h in held:
    h.close()
hog.close()
s = conn(); s.sendall(frame(q)); n = struct.unpack("!H", s.recv(2))[0]; assert n > 12; s.close()
server.stop()
print("TCP OK", server.tcp.counters.stats()["tcp"])
"""


def test_tcp_loop_under_sanitizers(sanitized_tree, tmp_path):
    """The data-plane TCP loop (ext/tcp.pxi) under ASan/UBSan: pipelined corpus packets split
    at odd places, lying and partial length prefixes, resets mid-message, a peer that never
    reads, the query limit, more connections than slots."""
    root, libasan = sanitized_tree
    packets = _packets()[::4]
    pfile = tmp_path / "packets.pickle"
    pfile.write_bytes(pickle.dumps(packets))
    script = tmp_path / "tcp_replay.py"
    script.write_text(CHILD_TCP)
    r = _run([sys.executable, str(script), str(root / "src"), str(pfile), str(EXAMPLE_ZONE)],
             _sanitizer_env(libasan), tmp_path, 300)
    reports = [m for m in SANITIZER_MARKS if m in r.stderr]
    assert not reports, f"sanitizer report:\n{r.stderr[-6000:]}"
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("TCP OK")]
    # the count of queries read varies with the load: under ASan a pipelined message can miss
    # its timeout (CI runs read 1,687 and 1,779 of 1,796 sent), so this asserts that the loop
    # got through the bulk of the corpus, as the UDP replay above does; the sanitizer report
    # and the clean exit are what this test is for
    assert line and int(line[0].split()[2]) > len(packets) // 2, r.stdout
