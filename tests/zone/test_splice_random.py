"""zone/splice.py against the full compile on random zone sets (hypothesis): zones nested in one
another (`t.`, `a.t.`, `b.a.t.`, `c.t.`, `u.`), each with random names whose NS/MX/SRV targets
point into random zones (names with an address or not, below cuts or not), then a random run of
splices (a zone replaced, added or removed, several at once): after each, every query of every
name answers byte for byte as a full compile of the resulting zone set, and the image's zone
list and counts agree."""
from __future__ import annotations

import dns.name
from hypothesis import HealthCheck, given, settings, strategies as st

from pop53.zone.compiler import compile_zone_data
from pop53.zone.images import Image
from pop53.zone.splice import splice
from pop53.zone.zonefile import zone_from_bytes

from tests.zone.test_splice import answers as splice_answers, key

SEED = 0x0BADCAFE
ORIGINS = ["t.", "a.t.", "b.a.t.", "c.t.", "u."]
LABELS = ["x", "y", "ns", "mail", "a", "b"]
TYPES = ("A", "NS", "MX", "SRV", "ANY")


def _target(draw):
    origin = draw(st.sampled_from(ORIGINS))
    return f"{draw(st.sampled_from(LABELS))}.{origin}"


@st.composite
def zone_text(draw, origin: str, serial: int):
    lines = [f"$ORIGIN {origin}", "$TTL 300", f"@ SOA ns h {serial} 3600 600 86400 300",
             f"@ NS {_target(draw)}"]
    for label in draw(st.lists(st.sampled_from(LABELS), max_size=5, unique=True)):
        kind = draw(st.sampled_from(("A", "NS", "MX", "SRV", "cut")))
        if kind == "A":
            lines.append(f"{label} A 192.0.2.{draw(st.integers(1, 250))}")
        elif kind == "cut":          # a delegation with glue below it
            lines += [f"{label} NS ns.{label}", f"ns.{label} A 198.51.100.{len(lines)}"]
        elif kind == "NS":
            lines += [f"{label} NS {_target(draw)}", f"{label} NS {_target(draw)}"]
        elif kind == "MX":
            lines.append(f"{label} MX 10 {_target(draw)}")
        else:
            lines.append(f"{label} SRV 0 0 53 {_target(draw)}")
    return "\n".join(lines) + "\n"


def parse(origin: str, text: str):
    return zone_from_bytes(text.encode(), dns.name.from_text(origin), source=origin)


def answers(image) -> list[bytes]:
    return splice_answers(image, ORIGINS, ["@", *LABELS, *(f"ns.{l}" for l in LABELS)], TYPES)


@st.composite
def runs(draw):
    present = draw(st.lists(st.sampled_from(ORIGINS), min_size=1, unique=True))
    first = {o: draw(zone_text(o, 1)) for o in present}
    steps = []
    for serial in range(2, 2 + draw(st.integers(1, 4))):
        put = {o: draw(zone_text(o, serial))
               for o in draw(st.lists(st.sampled_from(ORIGINS), max_size=2, unique=True))}
        gone = [o for o in draw(st.lists(st.sampled_from(ORIGINS), max_size=1, unique=True))
                if o not in put]
        steps.append((put, gone))
    return first, steps


@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(runs())
def test_random_splices_answer_as_a_full_compile(run):
    first, steps = run
    texts = dict(first)
    image = compile_zone_data([parse(o, t) for o, t in texts.items()], seed=SEED)
    for put, gone in steps:
        gone = [o for o in gone if o in texts and len(texts) > 1]
        new = splice(image, {key(o): compile_zone_data([parse(o, t)], seed=SEED)
                             for o, t in put.items()}, [key(o) for o in gone])
        assert new is not None, splice.last_reason
        texts.update(put)
        for o in gone:
            del texts[o]
        Image(new._data, full_check=True)
        full = compile_zone_data([parse(o, t) for o, t in texts.items()], seed=SEED)
        assert answers(new) == answers(full)
        assert new.zones() == full.zones() and new.counts == full.counts
        image = new
