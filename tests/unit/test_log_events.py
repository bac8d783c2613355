"""One log-event style: every log event of the production code is one snake_case word
(``log.info("followers_loaded", symbols=3)``), its details in fields, never prose, so that an operator can
search and count events by name across the five services.

The modules are read with ``ast``, not imported: every call ``<logger>.<level>(event, ...)`` (``log``,
``logger``, ``self._log``, ``log.bind(...)``, ...) must name its event with a string literal matching
:data:`EVENT`. A helper that logs an event its caller names (:func:`crypto_mesh.retry.retrying`) is checked at
each of its calls instead.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EVENT = re.compile(r"^[a-z][a-z0-9_]*$")
LEVELS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical", "fatal", "msg"})
#: Methods of a structlog logger that return a logger (``log.bind(symbol=s).info(...)``).
BINDERS = frozenset({"bind", "new", "unbind", "try_unbind"})
#: Helpers whose first argument is an event they log: (module, function) → the parameter that carries it.
FORWARDERS = {("crypto_mesh/retry.py", "retrying"): "event", ("etl/consumer.py", "retrying"): "event"}

PACKAGES = [
    "crypto_mesh",
    "launcher",
    "auth",
    "aggregator",
    "socket_proxy",
    "etl",
    "profile_bff",
]


def _is_logger(node: ast.expr) -> bool:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in BINDERS:
        return _is_logger(node.func.value)
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    if name is None:
        return False
    name = name.lstrip("_")
    return name in {"log", "logger"} or name.endswith(("_log", "_logger"))


def _event_argument(call: ast.Call) -> ast.expr | None:
    """The argument naming the event of a logger call (``log.log(level, event)``: the second), None when the
    call is no logging call."""
    func = call.func
    if not isinstance(func, ast.Attribute) or not _is_logger(func.value):
        return None
    position = 1 if func.attr == "log" else 0 if func.attr in LEVELS else None
    if position is None:
        return None
    if len(call.args) > position:
        return call.args[position]
    return next((keyword.value for keyword in call.keywords if keyword.arg == "event"), ast.Constant(None))


def _is_forwarder_call(call: ast.Call) -> bool:
    names = {function for _, function in FORWARDERS}
    func = call.func
    return (isinstance(func, ast.Name) and func.id in names) or (
        isinstance(func, ast.Attribute) and func.attr in names
    )


def _calls(tree: ast.AST, module: str) -> Iterator[tuple[ast.Call, str | None]]:
    """Every call of ``tree``, with the event parameter it may forward (in a :data:`FORWARDERS` function)."""

    def visit(node: ast.AST, forwarded: str | None) -> Iterator[tuple[ast.Call, str | None]]:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            forwarded = FORWARDERS.get((module, node.name), forwarded)
        if isinstance(node, ast.Call):
            yield node, forwarded
        for child in ast.iter_child_nodes(node):
            yield from visit(child, forwarded)

    return visit(tree, None)


def log_events(source: str, module: str) -> tuple[int, list[str]]:
    """(the number of events named in ``source``, the problems found: ``"<module>:<line>: ..."``)."""
    events, problems = 0, []
    for call, forwarded in _calls(ast.parse(source), module):
        event = _event_argument(call)
        if event is None and _is_forwarder_call(call):
            event = call.args[0] if call.args else ast.Constant(None)
        if event is None:
            continue
        events += 1
        if isinstance(event, ast.Name) and event.id == forwarded:
            continue
        literal = isinstance(event, ast.Constant) and isinstance(event.value, str)
        if not (literal and EVENT.match(event.value)):
            problems.append(f"{module}:{call.lineno}: event {ast.unparse(event)} is not a snake_case literal")
    return events, problems


def test_the_checker_finds_prose_computed_and_missing_events_and_accepts_snake_case_words():
    source = '''
log.info("followers_loaded", symbols=3)
self._log.warning("redis_publish_failed")
log.bind(symbol="btcusdt").debug("symbol_tracked")
logger.log(20, "kafka_producer_started")
retrying("kafka_connect_retrying", topic="t")
log.info("followers loaded")
log.warning(f"failed {x}")
log.error(message)
logger.exception()
retrying("Kafka not reachable")
log.setLevel(10)
results.info("not a logger")
'''
    events, problems = log_events(source, "example.py")
    assert events == 10
    assert [problem.split(":")[1] for problem in problems] == ["7", "8", "9", "10", "11"]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_log_event_is_a_snake_case_word(package):
    events, problems = 0, []
    for path in sorted((ROOT / package).rglob("*.py")):
        if "proto" in path.relative_to(ROOT).parts:
            continue  # generated by grpc_tools
        module = path.relative_to(ROOT).as_posix()
        found, wrong = log_events(path.read_text(encoding="utf-8"), module)
        events += found
        problems += wrong
    assert events > 0, f"no log event found in {package}: is the checker still looking at the right calls?"
    assert problems == []
