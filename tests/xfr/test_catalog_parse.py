"""RFC 9432 catalog parsing (pop53.xfr.catalog.members_of): members, groups, the version
property, duplicates.  The end-to-end test with Knot is test_catalog_knot.py."""
from __future__ import annotations

import dns.name
import dns.zone
import pytest

from pop53.xfr.catalog import CatalogError, members_of

HEAD = "@ 0 SOA invalid. invalid. 1 3600 600 2147483646 0\n@ 0 NS invalid.\n"


def zone(text):
    return dns.zone.from_text(HEAD + text, origin="cat.invalid.", relativize=False)


def test_members_and_groups():
    z = zone('version 0 TXT "2"\nid1.zones 0 PTR a.example.\nid2.zones 0 PTR b.example.\n'
             'group.id2.zones 0 TXT "blue"\n')
    m = members_of(z)
    assert m == {dns.name.from_text("a.example."): {"id": "id1", "group": None},
                 dns.name.from_text("b.example."): {"id": "id2", "group": "blue"}}


@pytest.mark.parametrize("version", ["", 'version 0 TXT "1"\n', 'version 0 TXT "2" "x"\n'])
def test_a_catalog_without_schema_version_2_is_not_processed(version):
    with pytest.raises(CatalogError, match="§4.2.1"):
        members_of(zone(version + "id1.zones 0 PTR a.example.\n"))


def test_two_ptrs_under_one_id_and_one_zone_under_two_ids_are_ignored():
    z = zone('version 0 TXT "2"\nid1.zones 0 PTR a.example.\nid1.zones 0 PTR c.example.\n'
             'id2.zones 0 PTR b.example.\nid3.zones 0 PTR b.example.\n'
             'x.id4.zones 0 PTR deeper.example.\n')
    assert list(members_of(z)) == [dns.name.from_text("b.example.")]
