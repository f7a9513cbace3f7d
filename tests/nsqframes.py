"""Server-side NSQ frames for tests: what nsqd would send."""

from __future__ import annotations

import json
import struct

from psd.nsq import framing


def frame(frame_type: int, data: bytes) -> bytes:
    return struct.pack(">ll", 4 + len(data), frame_type) + data


def response(data: bytes) -> bytes:
    return frame(framing.FRAME_RESPONSE, data)


def error(data: bytes) -> bytes:
    return frame(framing.FRAME_ERROR, data)


def message(message_id: bytes, body: bytes, attempts: int = 1, timestamp: int = 1458061005 * 10**9) -> bytes:
    return frame(framing.FRAME_MESSAGE, framing.MESSAGE_HEADER.pack(timestamp, attempts, message_id) + body)


def identify_reply(**settings) -> bytes:
    reply = {"max_rdy_count": 2500, "version": "1.3.0", "max_msg_timeout": 900000, "msg_timeout": 60000}
    reply.update(settings)
    return response(json.dumps(reply).encode())


HEARTBEAT = response(framing.HEARTBEAT)
OK = response(framing.OK)


class WireEnd:
    """The nsqd side of one StringTransport connection: what the client sent, what it receives.

    Users set ``transport`` (a StringTransport) and ``protocol`` (the client protocol).
    """

    def sent(self) -> bytes:
        data = self.transport.value()
        self.transport.clear()
        return data

    def receive(self, data: bytes) -> None:
        self.protocol.dataReceived(data)
