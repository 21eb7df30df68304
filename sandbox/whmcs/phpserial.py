"""Decode PHP ``serialize()`` output, as WHMCS expects inside base64 ``customfields`` parameters.

Only the scalar and array forms (``N b i d s a``) that ``serialize(array(...))`` produces; objects
and references are refused. Written here rather than depending on ``phpserialize`` (unmaintained,
untyped) because forty lines cover everything WHMCS clients send.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any


class PhpSerialError(ValueError):
    pass


def decode_base64_serialized(text: str) -> dict[Any, Any]:
    """``base64_decode`` then ``unserialize``; the result must be an array (a dict here)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PhpSerialError(f"not base64: {exc}") from None
    value = unserialize(raw)
    if not isinstance(value, dict):
        raise PhpSerialError("serialized value is not an array")
    return value


def unserialize(data: bytes) -> Any:
    value, end = _parse(data, 0)
    if end != len(data):
        raise PhpSerialError(f"trailing bytes at offset {end}")
    return value


def _parse(data: bytes, i: int) -> tuple[Any, int]:
    if data[i : i + 2] == b"N;":
        return None, i + 2
    kind, sep = data[i : i + 1], data[i + 1 : i + 2]
    if sep != b":":
        raise PhpSerialError(f"unexpected byte at offset {i}")
    if kind in (b"i", b"b", b"d"):
        end = _find(data, b";", i + 2)
        return _scalar(kind, data[i + 2 : end].decode("ascii")), end + 1
    if kind == b"s":
        return _string(data, i)
    if kind == b"a":
        return _array(data, i)
    raise PhpSerialError(f"unsupported type {kind!r} at offset {i}")


def _scalar(kind: bytes, text: str) -> Any:
    try:
        return {b"i": int, b"d": float}[kind](text) if kind != b"b" else text == "1"
    except ValueError:
        raise PhpSerialError(f"bad {kind.decode()} value {text!r}") from None


def _string(data: bytes, i: int) -> tuple[str, int]:
    colon = _find(data, b":", i + 2)
    length = int(data[i + 2 : colon])
    start = colon + 2  # skip ':"'
    if data[colon + 1 : start] != b'"' or data[start + length : start + length + 2] != b'";':
        raise PhpSerialError(f"bad string at offset {i}")
    return data[start : start + length].decode("utf-8"), start + length + 2


def _array(data: bytes, i: int) -> tuple[dict[Any, Any], int]:
    colon = _find(data, b":", i + 2)
    count = int(data[i + 2 : colon])
    if data[colon + 1 : colon + 2] != b"{":
        raise PhpSerialError(f"bad array at offset {i}")
    pos, result = colon + 2, {}
    for _ in range(count):
        key, pos = _parse(data, pos)
        result[key], pos = _parse(data, pos)
    if data[pos : pos + 1] != b"}":
        raise PhpSerialError(f"unterminated array at offset {i}")
    return result, pos + 1


def _find(data: bytes, needle: bytes, start: int) -> int:
    found = data.find(needle, start)
    if found < 0:
        raise PhpSerialError(f"missing {needle!r} after offset {start}")
    return found
