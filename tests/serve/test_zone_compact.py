"""serve/compact.py: the garbage splices leave is dropped by a background compile of the same
files, published only when nothing changed meanwhile; a zone file edited but not reloaded makes
it drop the compact image (it would publish that edit behind the operator's back)."""
from __future__ import annotations

from pop53.serve import compact, zones
from tests.serve.test_zone_splice_reload import (assert_as_full_compile, make_server, names_of,
                                                 zone_text)


def test_compaction_after_splices(tmp_path, monkeypatch):
    monkeypatch.setattr(compact, "COMPACT_AT", 1.0)     # any garbage at all
    monkeypatch.setattr(compact, "COMPACT_MIN", 0)
    monkeypatch.setattr(zones, "ISOLATE_BYTES", 0)      # compiled in a child, as big sets are
    names = names_of(6)
    s = make_server(tmp_path, names)
    zs = s.zones
    full = len(s.current_image)
    (tmp_path / "z001.test.zone").write_text(zone_text("z001.test.", 2, hosts=40))
    assert s.reload("z001.test.")
    assert zs.counts["spliced"] == 1
    spliced, generation = len(s.current_image), s.slot.generation
    assert spliced > full
    zs.compactor.thread.join(60)
    assert zs.compactor.done == 1 and s.slot.generation == generation + 1
    assert len(s.current_image) < spliced          # the old z001 is gone
    assert zs.serials["z001.test."] == 2
    assert_as_full_compile(s, tmp_path, names)
    # an edit not reloaded yet: the compaction that follows the next splice drops its image
    (tmp_path / "z002.test.zone").write_text(zone_text("z002.test.", 5))
    (tmp_path / "z003.test.zone").write_text(zone_text("z003.test.", 3, hosts=30))
    assert s.reload("z003.test.")
    generation = s.slot.generation
    zs.compactor.thread.join(60)
    assert zs.compactor.done == 1 and s.slot.generation == generation
    assert zs.serials["z002.test."] == 1 and zs.serials["z003.test."] == 3
    zs.stop()
