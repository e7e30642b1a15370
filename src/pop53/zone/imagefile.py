"""A compile written straight to an image file (issue 15: a cold load of a million-name zone
peaks at most 2x its image; issue 12: signed zones too).

The C compile of scanner-read zones, signed or not (ext/zonebuild.pxi, ext/zonebuild_dsec.pxi),
is laid out in memory as arrays; its image is written to the file a few MiB at a time
(ext/zonestream.pxi) instead of into a buffer the size of the image, so the compiler child (and
`pop53 check`) never hold the image and the arrays it is made from at once.  The bytes are
compile_zone_data's (which streams the same bytes into a buffer).  Zones dnspython read are
compiled in memory by the node compiler and saved.
"""
from __future__ import annotations

import gc
import os
import struct

import dns.name

from pop53 import _core
from pop53.errors import ZoneError
from pop53.zone import compiler
from pop53.zone.images import write_atomically
from pop53.zone.zonefile import ZoneData



def fixed_mmap_threshold(size: int = 256 << 10) -> None:
    """glibc raises its mmap threshold to the size of every big block freed (up to 32 MiB), so
    the next phase's arrays come from the heap and freed ones stay in the process: a compile's
    phases then add up instead of taking turns.  A fixed threshold keeps big blocks mapped and
    returns them when freed (mallopt M_MMAP_THRESHOLD).  For processes that compile a big zone
    and exit (the compiler child, `pop53 check`)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallopt(-3, size)     # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def compile_to_file(zones: list[ZoneData], path: str | os.PathLike, seed: int | None = None,
                    expired=(), consume: bool = False, sync: bool = True) -> int:
    """compile_zone_data(zones, seed, expired).save(path), without holding the image in memory
    when the C compile takes every zone.  Atomic (a temp file renamed).  Returns its size.
    consume: the zones' record columns the build has read are freed as it goes (the zones are
    of no use after that but for their warnings; for a process that compiles and exits)."""
    path = os.fspath(path)
    if not zones or not all(compiler._flat_ok(z) for z in zones):
        image = compiler.compile_zone_data(zones, seed=seed, expired=expired)
        image.save(path, sync)
        return len(image)
    compiler.check_origins(zones)
    expired = {dns.name.from_text(e) if isinstance(e, str) else e for e in expired}
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    zones = sorted(zones, key=lambda z: z.origin)
    enabled = gc.isenabled()
    gc.disable()
    try:
        flat = []
        for z in zones:
            flat.append(compiler._flat_zone(z))
            if consume:
                z.columns.drop_build_inputs()
        return write_flat(path, zones, flat, _core.FlatImage(flat), seed, expired, sync)
    finally:
        if enabled:
            gc.enable()


def flat_head(zones: list[ZoneData], flat: list, img, seed: int) -> tuple[dict, bytearray]:
    """The layout of built FlatZones (`flat`, of `zones` sorted by origin) and their FlatImage,
    and the image's head: its header (checksum zero), zone table and zone hash table."""
    try:
        lay = _core.flat_layout(img, compiler.HEADER.size, compiler.ZONE.size,
                                compiler._MAX_IMAGE)
    except OverflowError as exc:
        raise ZoneError(f"image would be {exc.args[0]} bytes; the format's limit is 4 GiB"
                        ) from None
    head = bytearray(lay["ztab_off"] + 4 * lay["ztab_size"])
    compiler.HEADER.pack_into(
        head, 0, b"POP53IMG", _core.IMAGE_VERSION, compiler.HEADER.size, lay["size"],
        len(zones), lay["zones_off"], lay["ztab_off"], lay["ztab_size"] - 1, seed, 0,
        lay["nodes"], lay["rrsets"], lay["records"], 0)
    compiler._fill_zone_table(head, [f.key for f in flat], lay["ztab_off"], lay["ztab_size"],
                              seed)
    return lay, head


def _stream(out, zones: list[ZoneData], img, lay: dict, head: bytearray, seed: int,
            expired: set) -> int:
    return _core.flat_stream(img, out, head, lay, seed, [z.origin in expired for z in zones],
                             _core.ZONE_FLAGS["EXPIRED"], compiler.ZONE.size)


def flat_image(zones: list[ZoneData], flat: list, seed: int, expired: set) -> bytearray:
    """The image of built FlatZones in memory (compile_zone_data's C compile)."""
    img = _core.FlatImage(flat)
    lay, head = flat_head(zones, flat, img, seed)
    buf = bytearray(lay["size"])
    struct.pack_into("<I", buf, compiler.CHECKSUM_OFFSET,
                     _stream(buf, zones, img, lay, head, seed, expired))
    return buf


def write_flat(path: str, zones: list[ZoneData], flat: list, img, seed: int, expired: set,
               sync: bool = True) -> int:
    """The image of built FlatZones (`flat`, of `zones` sorted by origin) and their FlatImage,
    written to path.  Returns its size."""
    lay, head = flat_head(zones, flat, img, seed)
    _write(path, lambda fd: _stream(fd, zones, img, lay, head, seed, expired), sync)
    return lay["size"]


def _write(path: str, stream, sync: bool = True) -> None:
    """stream(fd) writes the image and returns its checksum, stored into the header last."""
    def fill(fd: int) -> None:
        os.pwrite(fd, struct.pack("<I", stream(fd)), compiler.CHECKSUM_OFFSET)
    write_atomically(path, fill, sync)
