"""pop53 against Knot DNS: the same zones (pop53.compile_zones / knotd), the same queries
(pop53.answer in process / UDP or TCP on 127.0.0.1), compared rule by rule.

A failure lists each query with both answers' differences; differences that are intentional
are in dnsdiff_table (docs/differential.md).  A pop53 bug is written down in
/work/notes/differential.md, never added to the table.
"""
from __future__ import annotations

import pytest

import dnsdiff
import dnsdiff_table as table

pytestmark = pytest.mark.peers


@pytest.mark.parametrize("category", dnsdiff.CATEGORIES)
def test_pop53_agrees_with_knot(category, corpus, knot_replies, pop53_replies):
    dnsdiff.must_agree(corpus, "knot", knot_replies, "pop53", pop53_replies,
                       table.QUIRKS, table.EXCUSES, category)


def test_pop53_answers_every_query(corpus, pop53_replies):
    """No valid query in the corpus is dropped (answer() returns None only for drops)."""
    lost = [c.key for c, r in zip(corpus, pop53_replies) if r is None]
    assert not lost, f"pop53 dropped {len(lost)} queries, e.g. {lost[:5]}"


def test_pop53_truncation_keeps_rrsets_whole(corpus, pop53_replies):
    """A truncated pop53 reply is still a valid message whose answer RRsets are complete
    (RFC 2181 §9: never a partial RRset), and it fits the client's limit (512 without EDNS,
    else the advertised size capped at 1232)."""
    import dnsdiff_table as t
    truncated = 0
    for c, raw in zip(corpus, pop53_replies):
        r = dnsdiff.normalize(raw)
        if c.tcp or r is None or not r.flags.get("TC"):
            continue
        truncated += 1
        assert not r.error, f"{c.key}: truncated reply does not parse: {r.error}"
        limit = 512 if c.edns is None else max(512, min(c.edns, 1232))
        assert len(raw) <= limit, f"{c.key}: {len(raw)} octets > {limit}"
        groups: dict = {}
        for rr in r.answer:
            groups[(rr.name, rr.rdtype)] = groups.get((rr.name, rr.rdtype), 0) + 1
        for (owner, rdtype), n in groups.items():
            held = t.rrsets_at(owner).get(rdtype)
            assert held is None or n == held, f"{c.key}: {n} of {held} {owner} {rdtype}"
    assert truncated > 20   # the corpus does force truncation
