"""A compile of zone files in a child process that the server's stop cancels at once.

Big zone sets compile in a fresh child (zone/compiler.compile_files_isolated): its memory goes
back to the system when it exits and it does not compete with the serving threads for the GIL.
A compile of a million-record zone takes minutes; SIGTERM must not wait for it (issue 14 point
2): `stop()` kills the child and removes its half-written image, and the reload that was
waiting for it gives up.
"""
from __future__ import annotations

import os
import tempfile

from pop53.errors import Pop53Error
from pop53.zone.compiler import CompilerUnavailable, compile_files_isolated
from pop53.zone.images import Image, load_image


class ChildCompile:
    def __init__(self, nice: int = 0):
        """nice: the child's scheduling priority is lowered by this much (a background
        compaction, serve/compact.py, yields the CPU to serving and reloads)."""
        self.nice = nice
        self.stopping = False
        self._child = None      # the compiler process in flight
        self._path = None       # the image it writes

    def compile(self, specs: list[tuple[str, str]], directory: str,
                include_dir: str | None, seed: int | None = None) -> tuple[Image, dict]:
        """(the new image, mapped; compile_files_isolated's result).  Raises ZoneError,
        CompilerUnavailable (compile in-process instead), Pop53Error when stopped."""
        if self.stopping:
            raise Pop53Error("stopping: no compile started")
        os.makedirs(directory, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=".pop53-compile-", suffix=".img", dir=directory)
        os.close(fd)
        self._path = path
        try:
            result = compile_files_isolated(specs, path, skip_bad=True, include_dir=include_dir,
                                            on_child=self._started, seed=seed)
            # checked in full here: the child writes the image straight to its file and never
            # holds it to check it (issue 15)
            return load_image(path, full_check=True), result
        except CompilerUnavailable:
            if self.stopping:
                raise Pop53Error("stopping: the compile was cancelled") from None
            raise
        finally:
            self._child = None
            _unlink(path)      # the mapping keeps the data; no file is left behind

    def _started(self, proc) -> None:
        self._child = proc
        if self.nice:
            try:
                os.setpriority(os.PRIO_PROCESS, proc.pid, min(19, os.nice(0) + self.nice))
            except OSError:
                pass
        if self.stopping:
            proc.kill()

    def stop(self) -> None:
        self.stopping = True
        child = self._child
        if child is not None and child.poll() is None:
            child.kill()
            _unlink(self._path)     # the process may exit before the reload thread does


def _unlink(path: str | None) -> None:
    try:
        if path:
            os.unlink(path)
    except FileNotFoundError:
        pass
