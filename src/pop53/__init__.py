"""pop53: an anycast authoritative DNS server with a Cython data plane.

Public API (tools outside the project rely on these names):
    compile_zones(paths) -> Image, Image.save(path), load_image(path) -> Image,
    answer(image, wire, client) -> bytes | None.
"""
from __future__ import annotations

from pop53._core import Responder
from pop53._core import answer_image as _answer_image
from pop53.zone.compiler import compile_zone_data, compile_zones
from pop53.zone.images import Image, load_image

__all__ = ["Image", "Responder", "answer", "compile_zones", "compile_zone_data", "load_image"]
__version__ = "0.1.0"


def answer(image: Image | None, wire, client: tuple[str, int], *, tcp: bool = False,
           responder: Responder | None = None) -> bytes | None:
    """Answer one DNS message as the server would; None means the server drops it.

    `client` is the (address, port) the message came from.  Never raises on any input bytes:
    malformed messages get FORMERR (or are dropped) exactly as on the wire.
    """
    return _answer_image(image, wire, client, tcp, responder)
