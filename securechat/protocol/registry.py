"""Every frame type by its wire name."""

from __future__ import annotations

from .events import (
    Away,
    Bye,
    Error,
    Event,
    Hello,
    Joined,
    Left,
    Message,
    Names,
    Ping,
    Pong,
    Quit,
    Say,
    Welcome,
    Who,
)
from .keys import (
    Ack,
    Auth,
    Challenge,
    Delivery,
    FetchKeys,
    Keys,
    PrekeyCount,
    PublishKeys,
    Whisper,
    WhisperStatus,
)

__all__ = ["EVENT_TYPES"]

#: Wire name -> class, for decoding.
EVENT_TYPES: dict[str, type[Event]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        Say,
        Message,
        Who,
        Names,
        Joined,
        Left,
        Ping,
        Pong,
        Quit,
        Bye,
        Error,
        Challenge,
        Auth,
        PublishKeys,
        PrekeyCount,
        FetchKeys,
        Keys,
        Whisper,
        WhisperStatus,
        Delivery,
        Ack,
        Away,
    )
}
