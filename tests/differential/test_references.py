"""Knot against NSD on the same zones and queries.

This pins down where the two references disagree with each other (every disagreement must be
an entry of dnsdiff_table, whose ids docs/differential.md explains), and checks that the
comparison itself can fail.
"""
from __future__ import annotations

import dataclasses

import pytest

import dnsdiff
import dnsdiff_table as table

pytestmark = pytest.mark.peers


def test_corpus_is_deterministic_and_covers_every_rule(corpus):
    again = dnsdiff.build_corpus()
    assert [c.wire() for c in again] == [c.wire() for c in corpus]
    cats = {c.category for c in corpus}
    assert cats == set(dnsdiff.CATEGORIES), cats ^ set(dnsdiff.CATEGORIES)
    assert len(corpus) > 3000
    assert any(c.qname != c.qname.lower() for c in corpus if c.category == "mixed-case")


@pytest.mark.parametrize("kind", ["knot", "nsd"])
def test_reference_answers_every_query(kind, corpus, knot_replies, nsd_replies):
    replies = {"knot": knot_replies, "nsd": nsd_replies}[kind]
    lost = [c.key for c, r in zip(corpus, replies) if r is None]
    assert not lost, f"{kind} did not answer {len(lost)} queries, e.g. {lost[:5]}"
    bad = [c.key for c, r in zip(corpus, replies) if dnsdiff.normalize(r).error]
    assert not bad, f"{kind} sent unparsable replies to {bad[:5]}"


def test_comparison_is_not_vacuous(corpus, knot_replies, nsd_replies):
    """Without the table of intentional differences, Knot and NSD disagree (so the comparison
    can fail), and a reply compared with a doctored copy of itself is caught."""
    raw, _ = dnsdiff.mismatches(corpus, "knot", knot_replies, "nsd", nsd_replies)
    assert len(raw) > 100
    i = next(i for i, c in enumerate(corpus)
             if c.qname == "www.diff.example." and c.qtype == "A" and c.edns == 1232)
    r = dnsdiff.normalize(knot_replies[i])
    assert {rr.rdata for rr in r.answer} == {"c0000250", "c0000251"}
    # A flag and one TTL changed: both must be reported.
    doctored = bytearray(knot_replies[i])
    doctored[2] ^= 0x04                                   # AA
    d = dnsdiff.normalize(bytes(doctored))
    one = next(iter(d.answer))
    d = dataclasses.replace(d, answer=(d.answer - {one}) | {one._replace(ttl=one.ttl + 1)})
    probs, _ = dnsdiff.compare(corpus[i], "knot", r, "doctored", d)
    assert any(p.startswith("flags.AA") for p in probs), probs
    assert any(p.startswith("answer") for p in probs), probs


@pytest.mark.parametrize("category", dnsdiff.CATEGORIES)
def test_knot_and_nsd_agree_up_to_the_table(category, corpus, knot_replies, nsd_replies):
    dnsdiff.must_agree(corpus, "knot", knot_replies, "nsd", nsd_replies,
                       table.QUIRKS, table.EXCUSES, category)


def test_every_reference_table_entry_is_needed(corpus, knot_replies, nsd_replies):
    """An entry about Knot or NSD that no longer matches anything is stale: remove it."""
    _, used = dnsdiff.mismatches(corpus, "knot", knot_replies, "nsd", nsd_replies,
                                 table.QUIRKS, table.EXCUSES)
    # Entry ids start with the implementation whose behaviour they describe ("knot-", "nsd-",
    # "pop53-"); ids without a prefix are choices every implementation makes differently.
    about_refs = {q.id for q in table.QUIRKS if q.impls & {"knot", "nsd"}} | \
                 {e.id for e in table.EXCUSES
                  if {"knot", "nsd"} <= e.between and not e.id.startswith("pop53-")}
    assert about_refs - used == set()


def test_docs_explain_every_table_entry():
    """docs/differential.md has a row for every quirk and excuse, and no row for a removed one."""
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[2] / "docs" / "differential.md").read_text()
    rows = set(re.findall(r"^\| `([a-z0-9-]+)` \| (?:quirk|excuse) \|", doc, re.M))
    ids = {q.id for q in table.QUIRKS} | {e.id for e in table.EXCUSES}
    assert rows == ids, {"undocumented": ids - rows, "stale in docs": rows - ids}
