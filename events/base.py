"""Base class and registry of the fleet's event models, and envelope <-> model conversion.

Must not import the vocabulary modules: they import ``DomainEvent`` from here. They register
themselves when ``events/__init__.py`` imports them.

Every event type is a frozen pydantic model with a versioned CloudEvents ``type`` name
(``fleet.<domain>.<what-happened>.v<N>``) and a ``key()``: the aggregate id its records are
keyed (and so partitioned and ordered) by.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from events.envelope import Envelope
from events.errors import InvalidPayload, UnknownEventType

E = TypeVar("E", bound="DomainEvent")

REGISTRY: dict[str, type[DomainEvent]] = {}


class DomainEvent(BaseModel):
    """A fact (past tense) or a command (imperative) that travels on a topic."""

    # bytes anywhere in an event (a Salesforce Pub/Sub replay id inside a change's ``raw``) travel as hex
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="hex")

    TYPE: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        type_name = cls.__dict__.get("TYPE")
        if type_name:
            if type_name in REGISTRY:
                raise TypeError(f"event type {type_name} registered twice")
            REGISTRY[type_name] = cls

    def key(self) -> str:  # pragma: no cover - every concrete event overrides it
        raise NotImplementedError


def to_envelope(
    event: DomainEvent,
    *,
    source: str,
    correlationid: str | None = None,
    causationid: str | None = None,
    traceparent: str | None = None,
    id: str | None = None,
) -> Envelope:
    kwargs: dict[str, Any] = {}
    if id is not None:
        kwargs["id"] = id
    return Envelope(
        source=source,
        type=event.TYPE,
        key=event.key(),
        subject=event.key(),
        data=event.model_dump(mode="json"),
        correlationid=correlationid,
        causationid=causationid,
        traceparent=traceparent,
        **kwargs,
    )


def decode_event(env: Envelope) -> DomainEvent:
    """The typed event inside an envelope; permanent errors name the type and the field."""
    model = REGISTRY.get(env.type)
    if model is None:
        raise UnknownEventType(f"no model for event type {env.type!r}")
    try:
        return model.model_validate(env.data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise InvalidPayload(f"{env.type}: {where}: {first['msg']}") from exc


def event_types() -> dict[str, type[DomainEvent]]:
    """All registered event models, by type name: the whole vocabulary, because the ``events``
    package imports every vocabulary module before any of its modules (this one included) is used."""
    return dict(sorted(REGISTRY.items()))
