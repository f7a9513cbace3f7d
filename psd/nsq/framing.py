"""NSQ V2 wire format: commands out, frames in.  Pure, no I/O.

Kept apart from the protocol so the byte-level rules (sizes that count the
type field, IDs echoed verbatim, names that must not smuggle spaces or
newlines into a command) are tested on their own.
"""

from __future__ import annotations

import json
import re
import struct
from typing import NamedTuple, Optional

MAGIC_V2 = b"  V2"
FRAME_RESPONSE = 0
FRAME_ERROR = 1
FRAME_MESSAGE = 2
HEARTBEAT = b"_heartbeat_"
OK = b"OK"
CLOSE_WAIT = b"CLOSE_WAIT"

# A frame size of b"HTTP" read as an int32: we are talking to an HTTP port.
HTTP_SIZE = struct.unpack(">l", b"HTTP")[0]
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
MESSAGE_HEADER = struct.Struct(">qH16s")
ID_LENGTH = 16
_NAME = re.compile(rb"[.a-zA-Z0-9_-]{1,64}(#ephemeral)?\Z")
_SIZE = struct.Struct(">lL")


class FramingError(Exception):
    """The byte stream cannot be NSQ V2 frames: the connection is unusable."""


class Frame(NamedTuple):
    type: int
    data: bytes


class Message(NamedTuple):
    """One delivered message.  ``id`` is the 16 bytes to send back unchanged."""

    timestamp: int
    attempts: int
    id: bytes
    body: bytes


def _name(value: str, what: str) -> bytes:
    raw = value.encode("ascii", "replace")
    if not _NAME.match(raw):
        raise ValueError(f"invalid NSQ {what} name {value!r}")
    return raw


def _message_id(message_id: bytes) -> bytes:
    if len(message_id) != ID_LENGTH or b" " in message_id or b"\n" in message_id:
        raise ValueError(f"invalid NSQ message id {message_id!r}")
    return message_id


def _command(*words: bytes, body: Optional[bytes] = None) -> bytes:
    line = b" ".join(words) + b"\n"
    if body is None:
        return line
    return line + struct.pack(">L", len(body)) + body


def identify(settings: dict) -> bytes:
    return _command(b"IDENTIFY", body=json.dumps(settings, sort_keys=True).encode("utf-8"))


def auth(secret: bytes) -> bytes:
    """AUTH; nsqd refuses an empty secret (E_BAD_BODY), so it is refused here first."""
    if not secret:
        raise ValueError("the NSQ AUTH secret is empty")
    return _command(b"AUTH", body=secret)


def subscribe(topic: str, channel: str) -> bytes:
    return _command(b"SUB", _name(topic, "topic"), _name(channel, "channel"))


def ready(count: int) -> bytes:
    if type(count) is not int or count < 0:
        raise ValueError(f"RDY count must be a non-negative integer, not {count!r}")
    return _command(b"RDY", b"%d" % count)


def finish(message_id: bytes) -> bytes:
    return _command(b"FIN", _message_id(message_id))


def requeue(message_id: bytes, delay_ms: int) -> bytes:
    """REQ; nsqd requires the delay (and treats -1 as fatal), so it is clamped."""
    return _command(b"REQ", _message_id(message_id), b"%d" % max(0, int(delay_ms)))


def touch(message_id: bytes) -> bytes:
    return _command(b"TOUCH", _message_id(message_id))


def publish(topic: str, body: bytes) -> bytes:
    return _command(b"PUB", _name(topic, "topic"), body=body)


NOP = _command(b"NOP")
CLS = _command(b"CLS")


def decode_message(data: bytes) -> Message:
    if len(data) < MESSAGE_HEADER.size:
        raise FramingError(f"message frame of {len(data)} bytes is shorter than its header")
    timestamp, attempts, message_id = MESSAGE_HEADER.unpack_from(data)
    return Message(timestamp, attempts, message_id, bytes(data[MESSAGE_HEADER.size:]))


class FrameDecoder:
    """Fed whatever the transport delivered; yields each complete frame once."""

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME):
        self._buffer = bytearray()
        self._max = max_frame_size

    def feed(self, data: bytes) -> list:
        """Append ``data``; return the frames it completed, in order."""
        buffer = self._buffer
        buffer += data
        frames = []
        offset = 0
        while len(buffer) - offset >= _SIZE.size:
            size, frame_type = _SIZE.unpack_from(buffer, offset)
            if size == HTTP_SIZE:
                raise FramingError("peer answered HTTP: this is nsqd's HTTP port, not TCP")
            if size < 4 or size > self._max:
                raise FramingError(f"frame size {size} is out of range")
            end = offset + 4 + size
            if len(buffer) < end:
                break
            frames.append(Frame(frame_type, bytes(buffer[offset + _SIZE.size:end])))
            offset = end
        del buffer[:offset]
        return frames
