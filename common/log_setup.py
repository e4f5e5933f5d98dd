"""The one logging setup of every process: `captioner worker` (Celery's loggers included), `captioner api` (gunicorn's
error and access logs through its `logconfig_dict`) and the other commands.

Everything goes through the root logger to one stream, stderr, as JSON lines (CAPTIONER_LOG_FORMAT=json: what a log
collector parses) or plain ones (people at a terminal), each with the fields bound in common/log_context.py.
"""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pythonjsonlogger.json import JsonFormatter

from common.log_context import FIELDS, ContextFilter

LogFormat = Literal["json", "plain"]
# The plain layout of before: tests and people read "logger: message" in it.
PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonLines(JsonFormatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, then the bound fields and any extra."""

    def __init__(self) -> None:
        # Not ASCII-escaped: messages quote users' prompts and keys, and a grep for them should find them.
        super().__init__("{levelname}{name}{message}", style="{", json_ensure_ascii=False,
                         rename_fields={"levelname": "level", "name": "logger"})

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)


class PlainLines(logging.Formatter):
    """The plain layout, with the bound fields after the message: `... name: message [request_id=... job_id=...]`."""

    def __init__(self) -> None:
        super().__init__(PLAIN)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = super().formatMessage(record).rstrip("\n")  # warnings end in one: the fields stay on the line
        fields = [f"{name}={_plain(getattr(record, name))}" for name in FIELDS if hasattr(record, name)]
        return f"{line} [{' '.join(fields)}]" if fields else line


def _plain(value: object) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


class AccessFields(logging.Filter):
    """gunicorn's access lines as fields too: its record's arguments are the request's atoms (method, path, status,
    time, headers), so a JSON line carries the request id the response was given, which the request's own context
    no longer holds when gunicorn logs it."""

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if isinstance(atoms, Mapping):
            request_id = atoms.get("{x-request-id}o")
            if request_id:
                record.request_id = request_id
            record.http_method = atoms.get("m")
            record.http_path = atoms.get("U")
            record.http_status = _int(atoms.get("s"))
            duration_us = atoms.get("D")
            if isinstance(duration_us, int):
                record.duration_ms = round(duration_us / 1000, 2)
        return True


def _int(value: object) -> object:
    try:
        return int(str(value))
    except ValueError:
        return value


def logging_config(log_format: LogFormat, level: str | int = "INFO") -> dict[str, Any]:
    """A `logging.config.dictConfig` dict: root to stderr in `log_format`, gunicorn's loggers through it."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}, "access": {"()": AccessFields}},
        "formatters": {"json": {"()": JsonLines}, "plain": {"()": PlainLines}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": log_format, "filters": ["context"]}},
        "root": {"level": level, "handlers": ["stderr"]},
        # gunicorn's own handlers are replaced by none: its lines reach the root's, in the same format.
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True, "filters": ["access"]},
        },
    }


def configure_logging(log_format: LogFormat, level: str | int = "INFO") -> None:
    """Set up this process's logging; warnings.warn goes through it too."""
    logging.config.dictConfig(logging_config(log_format, level))
    logging.captureWarnings(True)
