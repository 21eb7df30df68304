"""The one error tree of the fleet; each class says whether a retry can help.

The runtime reads ``retriable`` to choose between retrying (in place, then on retry topics)
and dead-lettering at once. Adapters map vendor status and result codes onto these classes in
one private function each; handlers raise them; nobody else decides what is retryable.

    FleetError                      retriable?
    ├── RetryableError              yes: the same input may succeed later
    │   ├── UpstreamUnavailable     5xx, connection refused/reset, dropped connection
    │   ├── UpstreamTimeout         connect/read timeout
    │   ├── RateLimited             429, REQUEST_LIMIT_EXCEEDED (carries retry_after)
    │   └── DependencyUnavailable   our own infrastructure: Kafka, Redis, Postgres
    └── PermanentError              no: retrying the same input cannot help
        ├── InvalidPayload          cannot decode or validate the record
        ├── UnknownEventType        a type the route has no model for
        ├── MappingMissing          product/client mapping absent (fix data, then replay)
        ├── RejectedByUpstream      the vendor said no (4xx business error, resultCode != 100)
        └── AuthenticationFailed    credentials refused after a fresh login

Exceptions outside this tree are treated as retryable by the runtime (an unknown bug may be a
race); ``asyncio.CancelledError`` is never caught as a failure, so shutdown is never dead-lettered.
"""

from __future__ import annotations

from typing import ClassVar


class FleetError(Exception):
    """Base of every error the fleet raises on purpose.

    Carries the context an operator needs in a log line or a dead-letter header.
    """

    retriable: ClassVar[bool] = True
    #: may many records fail this way at once because of the environment (an outage, revoked
    #: credentials) rather than the record itself? Only these can trip the batch circuit breaker.
    systemic: ClassVar[bool] = True
    #: short, stable machine code (written to Salesforce / DLQ headers where relevant)
    default_code: ClassVar[str] = "FLEET_ERROR"

    def __init__(
        self,
        message: str,
        *,
        upstream: str | None = None,
        code: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.upstream = upstream
        self.code = code or self.default_code
        self.status = status
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [self.message]
        if self.upstream:
            parts.append(f"upstream={self.upstream}")
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.code and self.code != self.default_code:
            parts.append(f"code={self.code}")
        return " ".join(parts)


class RetryableError(FleetError):
    retriable = True
    default_code = "RETRYABLE"


class UpstreamUnavailable(RetryableError):
    default_code = "UPSTREAM_UNAVAILABLE"


class UpstreamTimeout(RetryableError):
    default_code = "UPSTREAM_TIMEOUT"


class RateLimited(RetryableError):
    default_code = "RATE_LIMITED"


class DependencyUnavailable(RetryableError):
    default_code = "DEPENDENCY_UNAVAILABLE"


class PermanentError(FleetError):
    retriable = False
    systemic = False  # a poison message: dead-letter it and go on with the next record
    default_code = "PERMANENT"


class InvalidPayload(PermanentError):
    default_code = "INVALID_PAYLOAD"


class UnknownEventType(PermanentError):
    default_code = "UNKNOWN_EVENT_TYPE"


class MappingMissing(PermanentError):
    default_code = "MAPPING_MISSING"


class RejectedByUpstream(PermanentError):
    default_code = "REJECTED_BY_UPSTREAM"


class AuthenticationFailed(PermanentError):
    systemic = True  # revoked credentials fail every record alike: hold them, don't dead-letter them all
    default_code = "AUTHENTICATION_FAILED"


def is_retriable(exc: BaseException) -> bool:
    """Classify any exception: our tree says so itself; anything else counts as transient."""
    if isinstance(exc, FleetError):
        return exc.retriable
    return True


def is_systemic(exc: BaseException) -> bool:
    """Could this failure be the environment's rather than the record's? Unknown errors: yes."""
    if isinstance(exc, FleetError):
        return exc.systemic
    return True
