"""Records done ahead of the committed offset, carried in the commit's metadata to the next owner.

Owns the encoding only (pure functions). Must not commit or read offsets: ``workers.runtime.commits``
writes what ``encode`` returns beside each committed offset, the worker reads it back on assignment
(``ConsumerPort.committed_metadata``) and the partition task skips the offsets ``decode`` returns.

Why: with several keys in flight per partition, a record can be done while an earlier one is not
(a key still busy or backing off, records queued behind it). Kafka's committed offset only says
"everything before this is done", so a new owner (after a rebalance, a crash, a restart) would
handle those later records again. Confluent's Parallel Consumer solves the same problem the same
way: the offsets done beyond the committed one travel in the commit metadata. The inbox would keep
their effects once anyway; this keeps them from being delivered twice at all.

Format: ``fleet-done:1:<base64url bitset>``, bit ``i`` set when ``committed + 1 + i`` is done (the
committed offset itself is never done: it is the first record that is not). Kafka limits metadata
to ``offset.metadata.max.bytes`` (4,096 by default): past ``MAX_CHARS`` the highest offsets are
dropped, which only means those records are delivered again. Metadata that is not ours (another
tool committed with its own) or is malformed decodes to nothing: redelivery, never a skipped record
that was not done.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

PREFIX = "fleet-done:1:"
#: at most this many characters of metadata (Kafka's default limit is 4,096 bytes)
MAX_CHARS = 3_000
_MAX_BITS = (MAX_CHARS - len(PREFIX)) // 4 * 3 * 8  # base64 turns 3 bytes into 4 characters


def encode(committed: int, done: Iterable[int]) -> str:
    """The metadata for a commit of ``committed`` while the offsets ``done`` (above it) are done."""
    bits = sorted(o - committed - 1 for o in done if committed < o <= committed + _MAX_BITS)
    if not bits:
        return ""
    buf = bytearray(bits[-1] // 8 + 1)
    for bit in bits:
        buf[bit >> 3] |= 1 << (bit & 7)
    return PREFIX + base64.urlsafe_b64encode(bytes(buf)).decode("ascii")


def decode(committed: int, metadata: str | None) -> set[int]:
    """The offsets above ``committed`` that ``metadata`` (from ``encode``) says are done."""
    if not metadata or not metadata.startswith(PREFIX):
        return set()
    try:
        buf = base64.urlsafe_b64decode(metadata[len(PREFIX) :].encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return set()
    return {committed + 1 + (i << 3) + b for i, byte in enumerate(buf) if byte for b in range(8) if byte >> b & 1}
