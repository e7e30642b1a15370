"""The published image and what is retired behind it (read-copy-update).

Workers read the image through one pointer in `_core.Shared`; `publish` swaps it with one
atomic store.  The previous image (and a replaced map snapshot or scorer table, which retire the
same way) is kept until every reader has passed two batch boundaries after the swap (the epochs
the housekeeping thread checks in `reclaim`), so a query is always answered from exactly one
image and never from freed memory.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

from pop53 import _core
from pop53.zone.images import Image


class ImageSlot:
    def __init__(self, shared: _core.Shared, readers: Callable[[], list]):
        """readers(): every loop that reads the published pointers (UDP workers, TCP loops)."""
        self.shared = shared
        self.readers = readers
        self.current: Image | None = None
        self.lock = threading.RLock()      # one publisher at a time (zones, maps, scorer)
        # called after each publish with the image and, when the publisher knows them (a
        # patch), the serials of the zones it changed: {origin: serial}
        self.listeners: list[Callable[[Image, dict | None], None]] = []
        self.before: list[Callable[[Image], None]] = []     # run before the store (observe)
        self._retired: list[tuple[object, dict]] = []
        self.wake: Callable[[], None] = lambda: None    # the housekeeping thread: reclaim soon

    @property
    def generation(self) -> int:
        return self.shared.generation

    def publish(self, image: Image, changed: dict | None = None) -> int:
        """Make `image` the one every worker answers from.  One atomic store.  `changed`:
        {origin: serial} of the only zones that differ from the previous image, if known."""
        with self.lock:
            old = self.current
            for fn in self.before:
                fn(image)
            gen = self.shared.publish(image.view)
            self.current = image
            if old is not None:
                self.retire(old)
            for fn in self.listeners:
                fn(image, changed)
            return gen

    def retire(self, holder) -> None:
        """Keep `holder` (an image, map snapshot or scorer table just replaced) alive until no
        reader can still hold it."""
        with self.lock:
            self._retired.append((holder, {id(w): w.epoch for w in self.readers()}))
        self.wake()

    def reclaim(self) -> int:
        """Release retired holders no reader can still hold.  Returns how many are left.  Never
        waits for a publisher (a reload holds the lock while it compiles): it tries again on the
        next round."""
        if not self.lock.acquire(blocking=False):
            return len(self._retired)
        with self.lock:
            self.lock.release()      # held once, by the `with`
            readers = self.readers()
            # two quiescent points past the publish: the worker has reloaded the pointer
            self._retired = [(h, epochs) for h, epochs in self._retired
                             if not all(not w.running or w.epoch >= epochs.get(id(w), 0) + 2
                                        for w in readers)]
            return len(self._retired)
