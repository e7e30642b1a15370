"""Process logging: one line per event on stderr, as text or as JSON objects ([log] format),
so that journald, a log shipper or a human each get what they read best.

    [log]
    format = "json"      # or "text" (the default)
    level = "info"       # debug, info, warning, error

Text lines are "TIME LOGGER LEVEL MESSAGE"; a JSON line carries "time" (RFC 3339, UTC),
"level", "logger", "message" and the fields the code attached with `extra={"fields": {...}}`
(zone, serial, records, ...), so scripts never parse the message.
"""
from __future__ import annotations

import datetime
import json
import logging
import sys

FORMATS = ("text", "json")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
               .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
