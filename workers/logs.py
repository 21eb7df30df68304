"""structlog configuration: JSON when stderr is not a TTY, console otherwise; secrets redacted.

Context bound with ``structlog.contextvars`` (order id, ...) is merged by ``merge_contextvars``. The
consume runtime does not bind its per-record keys (topic, partition, offset, event_id, event_type,
correlation_id, key) one by one: it sets one context variable to the record it handles
(``open_record_slot`` once per task, then one attribute store per record) and ``merge_record_context``, which runs
first here, renders those keys only when a line is actually logged. Precedence: keys passed in the
log call, then the current record's keys, then keys bound with ``structlog.contextvars``.
The redaction processor runs last before rendering, so no secret reaches any output: values of
secret-named keys are masked, and every known secret value is scrubbed from every string.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from contextvars import ContextVar
from typing import Any, Literal, Protocol, TextIO

import structlog

MASK = "***"

_SECRET_KEY = re.compile(
    r"(pass(word)?|secret|token|auth_?key|oem_?key|api_?key|access_?key|private_?key|authorization"
    r"|signature|cookie|credential)",
    re.IGNORECASE,
)


class Redactor:
    """Masks secret-named keys and scrubs known secret values out of every string, recursively."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._values: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        # longest first so a secret containing another is masked whole
        merged = set(self._values) | {s for s in secrets if s and len(s) >= 4}
        self._values = sorted(merged, key=len, reverse=True)

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._values:
                if secret in value:
                    value = value.replace(secret, MASK)
            return value
        if isinstance(value, Mapping):
            return {k: (MASK if _is_secret_key(k, v) else self._scrub(v)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._scrub(v) for v in value)
        if isinstance(value, bytes):
            return self._scrub(value.decode("utf-8", errors="replace"))
        return value

    def __call__(self, _logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            value = event_dict[key]
            event_dict[key] = MASK if _is_secret_key(key, value) else self._scrub(value)
        return event_dict


def _is_secret_key(key: Any, value: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key)) and value not in (None, "", False)


REDACTOR = Redactor()


class LogContext(Protocol):
    """Something that knows its log keys (``workers.runtime.Message``): asked only when a line is logged."""

    def log_context(self) -> Mapping[str, Any]: ...


class RecordSlot:
    """The record whose keys lines logged in a context carry (``current``; None: none)."""

    __slots__ = ("current", "mutable")

    def __init__(self, current: LogContext | None = None, *, mutable: bool = False) -> None:
        self.current = current
        self.mutable = mutable


_RECORD_CONTEXT: ContextVar[RecordSlot | None] = ContextVar("fleet_record_context", default=None)


def set_record_context(ctx: LogContext | None) -> None:
    """Make ``ctx.log_context()`` part of every line logged in this context (``None`` clears it).

    Like ``ContextVar.set`` (a task's own context copy keeps its own value), except inside a task that
    opened a slot with ``open_record_slot``: there the slot is updated in place."""
    slot = _RECORD_CONTEXT.get()
    if slot is not None and slot.mutable:
        slot.current = ctx
    else:
        _RECORD_CONTEXT.set(RecordSlot(ctx))


def open_record_slot() -> RecordSlot:
    """A slot for a task that handles one record after another (a consume loop's partition task): set
    once in the task's context, then ``slot.current = record`` per record. Why not ``ContextVar.set``
    per record: each set builds a new context mapping and a token, ~5% of the loop's time at 150k
    records/s. The price: a task a handler leaves running after it returns (it copied this context,
    so it shares the slot) logs under the record the loop handles by then; handlers await their work."""
    slot = RecordSlot(mutable=True)
    _RECORD_CONTEXT.set(slot)
    return slot


def merge_record_context(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Add the current record's keys to the event dict; keys passed in the log call win. Runs before
    ``merge_contextvars``, so the record's keys also win over (stale) bound ones of the same name."""
    slot = _RECORD_CONTEXT.get()
    ctx = slot.current if slot is not None else None
    if ctx is not None:
        for key, value in ctx.log_context().items():
            event_dict.setdefault(key, value)
    return event_dict


def get_log_context() -> dict[str, Any]:
    """The context a line logged here would carry: the bound ``structlog.contextvars`` overlaid with
    the current record's keys (the processors' precedence)."""
    merged = structlog.contextvars.get_contextvars()
    slot = _RECORD_CONTEXT.get()
    ctx = slot.current if slot is not None else None
    if ctx is not None:
        merged.update(ctx.log_context())
    return merged


def configure_logging(
    level: str = "INFO",
    fmt: Literal["auto", "json", "console"] = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog (and stdlib logging of libraries) once per process."""
    REDACTOR.add(secrets)
    out = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            merge_record_context,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            REDACTOR,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level]),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=logging.WARNING, stream=out, format="%(levelname)s %(name)s %(message)s")


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
