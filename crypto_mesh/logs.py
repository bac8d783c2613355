"""Structured logging for every service: structlog on top of the standard library's logging.

Lines are ``key=value`` (``console``) or one JSON object (``json``), each with the service name, level,
logger and an ISO-8601 UTC timestamp. Records of libraries (aiohttp, grpc, aiokafka) pass through the
same formatter.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(service: str, level: str = "INFO", fmt: str = "console") -> None:
    """Route structlog and standard-library records of this process to stderr in one format.

    ``service`` is bound into every line as ``service=<name>``; ``fmt`` is ``console`` or ``json``.
    """
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _bind_service(service),
    ]
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "service", "logger", "event"], drop_missing=True
        )
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Per-request access lines of aiohttp are noise at INFO in a mesh that polls health.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _bind_service(service: str):
    def processor(_logger, _method, event_dict):
        event_dict.setdefault("service", service)
        return event_dict

    return processor


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named ``name``; call ``.info("event", key=value, ...)``."""
    return structlog.stdlib.get_logger(name)
