"""Structured log lines on stderr, one per event, which journald collects: `level=... logger=... msg`."""

from __future__ import annotations

import logging
import sys

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace("\n", " | ")
        line = f"level={record.levelname.lower()} logger={record.name} {message}"
        if record.exc_info:
            line += " exc=" + repr(self.formatException(record.exc_info)).replace("\\n", " | ")
        return line


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level, logging.INFO))
    # pymodbus logs every failed request at error level; our link reports those itself
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
