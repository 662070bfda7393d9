"""Events to JSON lines and back, with strict field types.

`encode` never fails for a valid event. `decode_line` raises `RemoteProtocolError`
for anything that is not a well-formed frame of a known type; it never raises
anything else, whatever the bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
import typing
from collections.abc import Iterable
from dataclasses import MISSING, fields

from .errors import Code, RemoteProtocolError
from .events import Event, Record
from .limits import MAX_LINE_BYTES, MAX_ROOMS_LISTED
from .registry import EVENT_TYPES
from .rooms import RoomEntry, Rooms

__all__ = ["decode_line", "encode", "fit_rooms"]

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(event: Event) -> bytes:
    """The frame for `event`: one JSON object in UTF-8, terminated by `\\n`."""
    return (_ENCODER.encode(event.to_dict()) + "\n").encode("utf-8")


def fit_rooms(pattern: str, rooms: Iterable[RoomEntry], *, max_bytes: int = MAX_LINE_BYTES) -> Rooms:
    """The `rooms` answer to a `list` for `pattern`, carrying `rooms` in the order given
    for as long as they fit: at most `MAX_ROOMS_LISTED` of them, in a frame of at most
    `max_bytes` bytes (newline excluded; the peer's line limit). `truncated` says some
    were left out.

    500 rooms with long topics would not fit one line; cutting here, where the encoding
    is known, keeps every answer a line the peer accepts.
    """
    # Counted with truncated=false, the longer of the two, and a comma for every entry:
    # the sum is never less than the frame's real length.
    size = len(encode(Rooms(pattern=pattern))) - 1
    taken: list[RoomEntry] = []
    truncated = False
    for entry in rooms:
        size += len(_ENCODER.encode(entry.to_dict()).encode("utf-8")) + 1
        if len(taken) == MAX_ROOMS_LISTED or size > max_bytes:
            truncated = True
            break
        taken.append(entry)
    return Rooms(pattern=pattern, rooms=tuple(taken), truncated=truncated)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def decode_line(line: bytes) -> Event:
    """Parse one line (without its newline) into an event.

    Raises `RemoteProtocolError`: fatal for bytes that are not UTF-8 JSON objects
    (the peer is not speaking this protocol), non-fatal for an unknown type or a bad
    field in an otherwise well-formed frame (the stream is still in sync).
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(Code.BAD_UTF8, "frame is not valid UTF-8", fatal=True) from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        # RecursionError: deeply nested arrays; ValueError also covers integers
        # beyond Python's digit limit.
        raise RemoteProtocolError(Code.BAD_JSON, "frame is not valid JSON", fatal=True) from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError(Code.BAD_FRAME, "frame is not a JSON object", fatal=True)
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise RemoteProtocolError(Code.BAD_FRAME, "frame has no string 'type'", fatal=True)
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        raise RemoteProtocolError(Code.UNKNOWN_TYPE, f"unknown frame type {kind[:40]!r}", fatal=False)
    return _build(cls, obj)


def _build(cls: type[Event], obj: dict[str, object]) -> Event:
    try:
        event = _record(cls, obj)
    except ValueError as exc:
        raise RemoteProtocolError(Code.INVALID, f"{cls.TYPE}: {exc}", fatal=False) from None
    assert isinstance(event, cls)
    return event


def _record(cls: type[Record], obj: dict[str, object]) -> Record:
    """Build `cls` from a JSON object; raises `ValueError` saying what is wrong."""
    kwargs: dict[str, object] = {}
    for name, hint, required in _schema(cls):
        if name not in obj:
            if required:
                raise ValueError(f"missing field {name!r}")
            continue
        value = _coerce(hint, obj[name])
        if value is _BAD:
            raise ValueError(f"field {name!r} has the wrong type")
        kwargs[name] = value
    return cls(**kwargs)  # the record's own validation raises ValueError


_BAD = object()


def _coerce(hint: object, value: object) -> object:
    # bool is a subclass of int in Python; JSON true is never a number here.
    if hint is str:
        return value if isinstance(value, str) else _BAD
    if hint is bool:
        return value if isinstance(value, bool) else _BAD
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _BAD
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                return _BAD
        return _BAD
    if hint is bytes:
        if not isinstance(value, str):
            return _BAD
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return _BAD
    if isinstance(hint, type) and issubclass(hint, Record):
        if not isinstance(value, dict):
            return _BAD
        try:
            return _record(hint, value)
        except ValueError:
            return _BAD
    if typing.get_origin(hint) is tuple:
        (item, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, list):
            return _BAD
        items = [_coerce(item, v) for v in value]
        return _BAD if any(i is _BAD for i in items) else tuple(items)
    raise TypeError(f"no decoder for field type {hint!r}")  # our bug: a new field type


_SCHEMAS: dict[type[Record], tuple[tuple[str, object, bool], ...]] = {}


def _schema(cls: type[Record]) -> tuple[tuple[str, object, bool], ...]:
    """(field name, type, required) for `cls`, worked out once per class."""
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        schema = tuple(
            (f.name, hints[f.name], f.default is MISSING and f.default_factory is MISSING)
            for f in fields(cls)
        )
        _SCHEMAS[cls] = schema
    return schema
