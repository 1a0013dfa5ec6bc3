"""Structured JSON logs, with a redaction filter so keys and tokens never reach a log line."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import TextIO

REDACTIONS = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"fqh_[0-9a-f]+_[A-Za-z0-9_-]+"), "fqh_[redacted]"),
    (re.compile(r"fqv1\.[^.\s]+\.[A-Za-z0-9_=-]+"), "fqv1.[redacted]"),
    (re.compile(r"(?i)((?:access|refresh)_token|client_secret|api_key|password)([\"']?\s*[:=]\s*[\"']?)[^\"'\s,&}]+"),
     r"\1\2[redacted]"),
]  # fmt: skip


def redact(text: str) -> str:
    """Mask API keys, bearer tokens, vault ciphertexts and ``secret=value`` pairs in a string."""
    for pattern, repl in REDACTIONS:
        text = pattern.sub(repl, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites every record's message through ``redact``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry)


def json_handler(stream: TextIO = sys.stderr) -> logging.Handler:
    """A handler writing redacted JSON lines to ``stream``."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    return handler


def configure_logging(level: str = "INFO") -> None:
    """Send the process's logs to stderr as redacted JSON lines."""
    root = logging.getLogger()
    root.handlers[:] = [json_handler()]
    root.setLevel(level)
