"""Compiled images: the Python handle, saving and loading (mmap), and zone metadata read back
from the image itself."""
from __future__ import annotations

import mmap
import os
import struct
import tempfile

import dns.name

from pop53 import _core
from pop53.errors import ImageError

_HEADER = struct.Struct("<8sIIQIIIIIIIIII")
_ZONE = struct.Struct("<IBBHIIIIII")
_RRSET = struct.Struct("<HHIIIIHH")
_CHECKSUM = 60          # the header's checksum field (compiler.CHECKSUM_OFFSET)


class Image:
    """An immutable compiled image.  Cheap to share between threads: workers read it lock-free."""

    __slots__ = ("view", "_data", "path", "__weakref__")

    def __init__(self, data, path: str | None = None, *, full_check: bool = True,
                 built: bool = False):
        """full_check: every record is checked, else the tables and the checksum; built: an
        image spliced here from checked parts (zone/arena.py), only its header and zone table
        are (its checksum field is not kept up to date: `save` writes it)."""
        try:
            self.view = _core.ImageView(data, 2 if built else int(full_check))
        except ValueError as exc:
            raise ImageError(f"{path or 'image'}: {exc}") from None
        self._data = data
        self.path = path

    def __len__(self) -> int:
        return self.view.size

    def __bytes__(self) -> bytes:
        return bytes(self._data)

    @property
    def n_zones(self) -> int:
        return self.view.n_zones

    @property
    def counts(self) -> dict:
        h = _HEADER.unpack_from(self._data, 0)
        return {"zones": h[4], "nodes": h[10], "rrsets": h[11], "records": h[12]}

    def zones(self) -> dict[str, int]:
        """Origin -> SOA serial of every zone in the image."""
        h = _HEADER.unpack_from(self._data, 0)
        out = {}
        for i in range(h[4]):
            z = _ZONE.unpack_from(self._data, h[5] + _ZONE.size * i)
            soa = _RRSET.unpack_from(self._data, z[9])
            rdata_off, rdlen = soa[3] + 2, soa[4] - 2
            serial = struct.unpack_from(">I", self._data, rdata_off + rdlen - 20)[0]
            out[_name_text(bytes(self._data[z[0]:z[0] + z[1]]))] = serial
        return out

    def zone_names(self) -> list[str]:
        """Every zone's origin, in zone-table order (what the per-zone counters label)."""
        h = _HEADER.unpack_from(self._data, 0)
        return [_name_text(bytes(self._data[z[0]:z[0] + z[1]])) for z in
                _ZONE.iter_unpack(self._data[h[5]:h[5] + _ZONE.size * h[4]])]

    def save(self, path: str | os.PathLike, sync: bool = True) -> None:
        """Write atomically (temp file + rename), so a reader never sees half an image."""
        def fill(fd: int) -> None:
            data = memoryview(self._data).cast("B")[:len(self)]
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
            # the checksum is for the saved file (a spliced image in memory does not keep it)
            os.pwrite(fd, struct.pack("<I", _core.checksum(data)), _CHECKSUM)
        write_atomically(path, fill, sync)


# wire origin -> its text: dnspython's from_wire + to_text cost ~0.05 ms a name, paid for every
# zone at every publish (1,000 zones: tens of ms on a one-zone reload's path) without this
_TEXT: dict[bytes, str] = {}


def _name_text(wire: bytes) -> str:
    text = _TEXT.get(wire)
    if text is None:
        if len(_TEXT) > 1 << 20:
            _TEXT.clear()
        text = _TEXT[wire] = dns.name.from_wire(wire, 0)[0].to_text()
    return text


def write_atomically(path: str | os.PathLike, fill, sync: bool = True) -> None:
    """fill(fd) writes an image into a temp file beside `path`, which is then synced and
    renamed to it: a reader sees the whole image or none of it.  sync=False: a scratch file
    read back once by a parent process (no crash-safety owed to it; the fsync of ~80 MB costs
    about half a second)."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=".pop53-img-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        try:
            fill(fd)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_image(path: str | os.PathLike, *, full_check: bool = False) -> Image:
    """Map a saved image read-only (pages populated up front) and check it: header, tables and
    checksum by default (tens of ms for a million records); every node, name and RDATA with
    full_check=True (a few hundred ms)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ImageError(f"{path}: empty file, not an image")
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            data = mmap.mmap(f.fileno(), size, flags=flags, prot=mmap.PROT_READ)
    except OSError as exc:
        raise ImageError(f"{path}: cannot read image: {exc.strerror}") from None
    return Image(data, path=path, full_check=full_check)
