"""Where a spliced image is built without copying the image it replaces (issue 14 point 2).

A splice (zone/splice.py) keeps every byte of the served image and appends the spliced zones,
a new zone table and its hash table; of the old bytes only the header changes.  Copying the
whole image for that cost ~10 ms a 86 MB image on a quiet machine (tens under load), its
checksum twice as much again, and a fresh buffer its page faults.

Instead the images of a splice chain share one memory file (memfd) holding their bytes, and each
image is a private copy-on-write mapping of it:

- the file's bytes below an image's size are never written again once that image exists: an
  older image still being answered from reads them;
- a new image maps the file privately at its new size, gets back the pages its predecessor
  holds privately (`pages`: the header page, and any other page a splice wrote below its old
  size, found in /proc/self/pagemap), writes the new header there (copying one page) and its
  tail (the spliced zones and tables) past the old size;
- `finish` writes the tail into the file and drops the mapping's private copies of it, so the
  next image maps the same pages.

A splice costs the header page and its tail, not the image.  The first splice after a full
compile or a restart copies the image into a new memory file once (or `prepare` does it ahead,
off the reload's path).  Images are not checksummed here: `Image.save` writes the checksum
into the saved file (the only place it is read).
"""
from __future__ import annotations

import mmap
import os
import threading
import weakref

import numpy as np

from pop53.zone.images import Image

PAGE = mmap.PAGESIZE


class _File:
    """A growing memory file; never shrunk (a mapping past its end would fault)."""

    def __init__(self, name: str):
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self.size = 0

    def grow(self, n: int) -> None:
        if n > self.size:
            os.ftruncate(self.fd, n)
            self.size = n

    def __del__(self):
        try:
            os.close(self.fd)
        except (OSError, AttributeError):
            pass


# image -> (its memory file, the page numbers it holds privately: they differ from the file)
_CHAIN: "weakref.WeakKeyDictionary[Image, tuple[_File, frozenset]]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def _u8(data) -> np.ndarray:
    return data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)


def _file_of(image: Image) -> tuple[_File, frozenset]:
    """The memory file `image` is in and its private pages; a new file with a copy of it when
    it is in none, or when an image in its file already extends past it (a second splice of the
    same image would write its tail over that image's)."""
    n = len(image)
    with _LOCK:
        have = _CHAIN.get(image)
        if have is not None and not any(f is have[0] and len(other) > n
                                        for other, (f, _p) in list(_CHAIN.items())):
            return have
    f = _File("pop53-image")
    f.grow(n)
    view = memoryview(_u8(image._data)[:n])
    done = 0
    while done < n:          # os.pwrite releases the GIL: workers and the server keep running
        done += os.pwrite(f.fd, view[done:], done)
    have = (f, frozenset())
    with _LOCK:
        _CHAIN[image] = have
    return have


def prepare(image: Image) -> None:
    """Copy `image` into a memory file now (a background thread calls this after a publish),
    so that its first splice does not."""
    _file_of(image)


def has_file(image: Image) -> bool:
    return image in _CHAIN


class Draft:
    """A new image being built after `old`: `arr` (writable, `total` bytes) holds old's bytes
    below len(old) and zeros past it."""

    def __init__(self, old: Image, total: int):
        self.old_size = len(old)
        if total < self.old_size:
            raise ValueError("a spliced image only grows")
        self.file, self.pages = _file_of(old)
        self.file.grow(total)
        self.map = mmap.mmap(self.file.fd, total, flags=mmap.MAP_PRIVATE,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.arr = np.frombuffer(self.map, np.uint8)
        src = _u8(old._data)
        for p in self.pages:
            lo, hi = p * PAGE, min((p + 1) * PAGE, self.old_size)
            if lo < hi:
                self.arr[lo:hi] = src[lo:hi]
        # past the old size the file may hold a splice that was given up (a fallback)
        self.arr[self.old_size:] = 0

    def finish(self, written: list[tuple[int, int]] | None) -> Image:
        """The image (its checks: the header and the zone table).  The pages below the old size
        it holds privately are found in /proc/self/pagemap (whatever the splice wrote there);
        without it, `written` says: the byte ranges below the old size the splice wrote, or
        None when it cannot say.  The next splice copies those pages from this image, or, when
        they are many or unknown, copies the image into a new file."""
        total = len(self.arr)
        n_old = -(-self.old_size // PAGE)
        private = _private_pages(self.arr, n_old)
        tail = memoryview(self.map)[self.old_size:total]
        done = 0
        while done < len(tail):
            done += os.pwrite(self.file.fd, tail[done:], self.old_size + done)
        del tail
        # the tail's whole pages read from the file again: one copy in memory, the next image's
        first = -(-self.old_size // PAGE) * PAGE
        if first < total:
            self.map.madvise(mmap.MADV_DONTNEED, first, total - first)
        image = Image(self.arr, built=True)
        pages = set(self.pages)
        if private is not None:
            pages.update(private.tolist())
        elif written is not None:
            for lo, hi in written:
                pages.update(range(lo // PAGE, (hi - 1) // PAGE + 1))
        else:
            return image
        if len(pages) <= max(64, n_old // 8):
            with _LOCK:
                _CHAIN[image] = (self.file, frozenset(pages))
        return image


def _private_pages(arr: np.ndarray, n: int) -> np.ndarray | None:
    """The page numbers among the first n of `arr`'s mapping (page-aligned) that this process
    holds privately, copied on write (Linux /proc/self/pagemap: present and not a file page,
    or swapped); None when that cannot be read."""
    addr = arr.__array_interface__["data"][0]
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(addr // PAGE * 8)
            raw = f.read(8 * n)
    except OSError:
        return None
    if len(raw) != 8 * n or addr % PAGE:
        return None
    e = np.frombuffer(raw, np.uint64)
    present, swapped, file_page = (e >> 63) & 1, (e >> 62) & 1, (e >> 61) & 1
    return np.flatnonzero(((present == 1) & (file_page == 0)) | (swapped == 1))
