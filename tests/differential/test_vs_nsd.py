"""pop53 against NSD: the same zones, the same queries, compared rule by rule (see
test_vs_knot.py; NSD's own policies are normalized by dnsdiff_table's quirks)."""
from __future__ import annotations

import pytest

import dnsdiff
import dnsdiff_table as table

pytestmark = pytest.mark.peers


@pytest.mark.parametrize("category", dnsdiff.CATEGORIES)
def test_pop53_agrees_with_nsd(category, corpus, nsd_replies, pop53_replies):
    dnsdiff.must_agree(corpus, "nsd", nsd_replies, "pop53", pop53_replies,
                       table.QUIRKS, table.EXCUSES, category)


def test_every_pop53_table_entry_is_needed(corpus, knot_replies, nsd_replies, pop53_replies):
    """An entry about pop53 that matches nothing any more is stale: remove it."""
    used = set()
    for name, replies in (("knot", knot_replies), ("nsd", nsd_replies)):
        _, u = dnsdiff.mismatches(corpus, name, replies, "pop53", pop53_replies,
                                  table.QUIRKS, table.EXCUSES)
        used |= u
    about_pop53 = {q.id for q in table.QUIRKS if "pop53" in q.impls} | \
                  {e.id for e in table.EXCUSES if e.id.startswith("pop53-")}
    assert about_pop53 - used == set()
