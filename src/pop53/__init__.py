"""pop53: an anycast authoritative DNS server with a Cython data plane.

Public API (tools outside the project rely on these names):
    compile_zones(paths) -> Image, Image.save(path), load_image(path) -> Image,
    answer(image, wire, client) -> bytes | None.
"""
from __future__ import annotations

# not `from typing import TYPE_CHECKING`: typing costs `pop53 ctl` several ms of its start
# (type checkers treat a name TYPE_CHECKING as true)
TYPE_CHECKING = False
if TYPE_CHECKING:
    from pop53._core import Responder
    from pop53.zone.images import Image

__all__ = ["Image", "Responder", "answer", "compile_zones", "compile_zone_data", "load_image"]
__version__ = "0.1.0"

# imported on first use (PEP 562): `pop53 ctl` and other light commands start without numpy and
# the compiler (a reload's command-to-visible time includes the CLI's start-up)
_LAZY = {"Responder": "pop53._core", "compile_zone_data": "pop53.zone.compiler",
         "compile_zones": "pop53.zone.compiler", "Image": "pop53.zone.images",
         "load_image": "pop53.zone.images"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pop53' has no attribute {name!r}")


def answer(image: "Image | None", wire, client: tuple[str, int], *, tcp: bool = False,
           responder: "Responder | None" = None) -> bytes | None:
    """Answer one DNS message as the server would; None means the server drops it.

    `client` is the (address, port) the message came from.  Never raises on any input bytes:
    malformed messages get FORMERR (or are dropped) exactly as on the wire.
    """
    from pop53._core import answer_image
    return answer_image(image, wire, client, tcp, responder)
