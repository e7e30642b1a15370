"""bench/attack/census.py: the stalls read from a run's --slow listing, and the class each gets
from what CPU 0 did (synthetic runs; the perf trace itself is read by `trace`)."""
from pathlib import Path

from bench.attack import census

LOG = """capacity pop53: 290,000 replies/s
slow 0 pop53 no attack 0.0 monotonic 100.000000 ['500:5.0', '500:4.5', '501:4.0', '900:2.5']
0 pop53 no attack 0.0 0/s ['1.000 0.0 0.7']
slow 0 pop53 random subdomains 3.0 monotonic 200.000000 ['10:3.0', '11:6.0', '40:-']
slow 0 pop53 repeated name 3.0 monotonic 300.000000 []
"""


def test_stalls_grouped_and_counted(tmp_path: Path):
    log = tmp_path / "run.log"
    log.write_text(LOG)
    found, rows = census.stalls(log, 4.0)
    assert rows == {"no attack": 1, "attack": 2}
    # 500-501 is one stall (its slowest 5.0 ms sent at 500); 900 is alone and under 4 ms;
    # 10-11 one stall; 40 (unanswered) one of its own, 29 ms after 11
    assert [(s["row"], s["off"], s["n"]) for s in found] == [
        ("pop53 no attack 0.0x, round 0", 500, 3),
        ("pop53 random subdomains 3.0x, round 0", 10, 2),
        ("pop53 random subdomains 3.0x, round 0", 40, 1)]
    first, second, lost = found
    assert abs(first["start"] - 100.5) < 1e-9 and abs(first["end"] - 100.505) < 1e-9
    assert abs(second["start"] - 200.011) < 1e-9 and abs(second["end"] - 200.017) < 1e-9
    assert lost["worst"] == float("inf") and abs(lost["end"] - lost["start"] - 0.020) < 1e-9


def _classify(runs, calls=None, worker=7):
    runs = sorted(runs, key=lambda r: r[1])
    stall = {"start": 10.000, "end": 10.010}
    return census.classify(stall, runs, [r[1] for r in runs], calls or {}, {10: worker})


def test_classes():
    ms = 0.001
    # the worker and the cap alternating, each as designed: none of the causes
    plain = [(10 + i * ms, 10 + (i + 0.5) * ms, 7, "python", 0.5 * ms) for i in range(10)]
    plain += [(10 + (i + 0.5) * ms, 10 + (i + 1) * ms, 9, "steal", 0.5 * ms) for i in range(10)]
    assert _classify(plain)[0] == "the worker and the cap"
    # a run of the worker 4 ms long on the wall clock with 0.5 ms of runtime: the host
    host = plain + [(10.002, 10.006, 7, "python", 0.5 * ms)]
    kind, got = _classify(host)
    assert kind == "the host" and abs(got["host"] - 3.5) < 1e-6
    # CPU 0 idle for 3 ms, past the cap's 1 ms timer: the host too
    assert _classify(plain + [(10.001, 10.004, 0, "swapper/0", None)])[0] == "the host"
    # the stealer with 3 ms of runtime in one run: over its slice
    assert _classify(plain + [(10.003, 10.006, 9, "steal", 3 * ms)])[0] == "cap over its slice"
    # the worker 2 ms on CPU inside one system call
    kind, got = _classify(plain, {7: [(10.004, 10.006)]})
    assert kind == "one system call" and abs(got["call"] - 2.0) < 1e-6
    # another thread's long call is not the worker's
    assert _classify(plain, {8: [(10.004, 10.006)]})[0] == "the worker and the cap"
