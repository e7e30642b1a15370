"""Typed errors for the code that catches them, specific for the human who reads them.

Importable without the compiled extension.
"""
from __future__ import annotations


class Pop53Error(Exception):
    """Base of every error pop53 raises on purpose."""


class ZoneError(Pop53Error):
    """A zone file or zone update is invalid.  Names the file, line and owner where known."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 owner: str | None = None, zone: str | None = None):
        self.message = message
        self.file = file
        self.line = line
        self.owner = owner
        self.zone = zone
        where = []
        if file:
            where.append(f"{file}:{line}" if line else file)
        if zone:
            where.append(f"zone {zone}")
        if owner:
            where.append(f"owner {owner}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ConfigError(Pop53Error):
    """The configuration is invalid.  Names the file and the key path."""

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.message = message
        self.file = file
        self.key = key
        where = ":".join(x for x in (file, key) if x)
        super().__init__(f"{where}: {message}" if where else message)


class ImageError(Pop53Error):
    """A compiled image is corrupt, truncated or of another format version."""


class RouteError(Pop53Error):
    """Route control failed (for example: no CAP_NET_ADMIN)."""


class StartError(Pop53Error, OSError):
    """The server cannot set up something it needs at start: an address already in use, a
    control socket or pidfile path that cannot be created.  One line naming the address or
    path; an OSError too (same errno), for callers that retry on EADDRINUSE."""

    def __init__(self, err: int | None, message: str):
        super().__init__(err, message)

    def __str__(self) -> str:
        return self.strerror
