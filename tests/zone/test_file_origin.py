"""`pop53 serve --zone FILE` guesses the zone's origin from the file a chunk of lines at a time
(zonefile.guess_file_origin; issue 12: a million-name signed zone was held twice, as bytes and
as text, before its compile): the same answer as _guess_origin over the whole text, wherever
the chunks are cut."""
from __future__ import annotations

import pytest

from pop53.errors import ZoneError
from pop53.zone.zonefile import _guess_origin, guess_file_origin

TEXTS = [
    "$ORIGIN a.test.\n@ SOA x y 1 1 1 1 1\n",
    "b.test. 300 SOA x y 1 1 1 1 1\n",
    "x A 192.0.2.1\n" * 50 + "$origin c.test.\n",
    # a $ORIGIN anywhere wins over an SOA before it
    "d.test. IN SOA x y 1 1 1 1 1\n" + "x A 192.0.2.1\n" * 200 + "$ORIGIN e.test.\n",
    "f.test.\r\n SOA x y 1 1 1 1 1\r\n",                     # CRLF, the owner alone on its line
    "g.test. SOA x y 1 1 1 1 1",                             # no final newline
    # "$ORIGIN" inside a record or indented is no directive
    'x TXT "$ORIGIN bad.test."\n$TTL 3\n $ORIGIN no.test.\nh.test. SOA x y 1 1 1 1 1\n',
    "$ORIGIN i.test.",
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("chunk", [1, 3, 7, 16, 1 << 20])
def test_origin_from_chunks_is_the_whole_files(tmp_path, text, chunk):
    path = tmp_path / "z"
    path.write_bytes(text.encode())
    want = _guess_origin(path.read_text(), str(path))
    assert guess_file_origin(str(path), chunk) == want


def test_no_origin_is_the_same_error(tmp_path):
    path = tmp_path / "z"
    path.write_text("x A 192.0.2.1\n" * 30)
    with pytest.raises(ZoneError, match="cannot tell the zone's origin"):
        guess_file_origin(str(path), 16)
