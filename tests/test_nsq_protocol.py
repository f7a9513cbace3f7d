"""One NSQ connection against a StringTransport and a Clock: no sockets, no sleeping."""

import json
import struct

from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from psd.nsq import framing
from psd.nsq.protocol import NSQError, NSQProtocol, ResponseTimeout
from tests import nsqframes

MESSAGE_ID = b"0a1b2c3d4e5f6789"
SETTINGS = {"feature_negotiation": True, "heartbeat_interval": 1000, "user_agent": "psd/test"}


class RecordingHandler:
    def __init__(self):
        self.messages = []
        self.closed = []
        self.made = []

    def connection_made(self, connection):
        self.made.append(connection)

    def message_received(self, connection, message):
        self.messages.append(message)

    def connection_closed(self, connection, reason):
        self.closed.append(reason)


class ProtocolTestCase(nsqframes.WireEnd, SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.handler = RecordingHandler()
        self.protocol = NSQProtocol(self.clock, self.handler, "127.0.0.1:4150", response_timeout=5.0)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.transport.protocol = self.protocol

    def subscribed(self, **reply):
        """Handshake as nsqd would answer it; returns IDENTIFY's result."""
        identified = self.protocol.identify(SETTINGS)
        self.receive(nsqframes.identify_reply(**reply))
        subscribed = self.protocol.subscribe("psd", "psd")
        self.receive(nsqframes.OK)
        self.successResultOf(subscribed)
        self.sent()
        return self.successResultOf(identified)


class HandshakeTests(ProtocolTestCase):
    def test_magic_then_identify_with_feature_negotiation(self):
        self.assertEqual(self.sent(), b"  V2")
        self.assertEqual(self.handler.made, [self.protocol])
        d = self.protocol.identify(SETTINGS)
        sent = self.sent()
        self.assertTrue(sent.startswith(b"IDENTIFY\n"))
        (length,) = struct.unpack(">L", sent[9:13])
        self.assertEqual(json.loads(sent[13:13 + length]), SETTINGS)
        self.assertNoResult(d)
        self.receive(nsqframes.identify_reply(max_rdy_count=50))
        self.assertEqual(self.successResultOf(d)["max_rdy_count"], 50)
        self.assertEqual(self.protocol.max_rdy_count, 50)

    def test_plain_ok_reply_keeps_defaults(self):
        d = self.protocol.identify({"heartbeat_interval": 1000})
        self.receive(nsqframes.OK)
        self.assertEqual(self.successResultOf(d), {})
        self.assertEqual(self.protocol.state, "identified")

    def test_subscribe(self):
        self.subscribed()
        self.assertEqual(self.protocol.state, "subscribed")

    def test_fatal_error_fails_the_pending_command_and_closes(self):
        self.protocol.identify(SETTINGS)
        self.receive(nsqframes.identify_reply())
        d = self.protocol.subscribe("psd", "psd")
        self.receive(nsqframes.error(b"E_BAD_TOPIC SUB topic name is not valid"))
        error = self.failureResultOf(d, NSQError).value
        self.assertEqual(error.code, b"E_BAD_TOPIC")
        self.assertTrue(error.fatal)
        self.assertTrue(self.transport.disconnecting)

    def test_reply_timeout_drops_the_connection(self):
        d = self.protocol.identify(SETTINGS)
        self.clock.advance(4.9)
        self.assertNoResult(d)
        self.clock.advance(0.2)
        self.failureResultOf(d, ResponseTimeout)
        self.assertTrue(self.transport.disconnected)

    def test_replies_are_matched_in_order(self):
        self.subscribed()
        first = self.protocol.publish("psd_dead", b"a")
        second = self.protocol.publish("psd_dead", b"b")
        self.receive(nsqframes.response(b"OK") + nsqframes.HEARTBEAT)
        self.assertEqual(self.successResultOf(first), b"OK")
        self.assertNoResult(second)
        self.receive(nsqframes.OK)
        self.successResultOf(second)

    def test_connection_lost_fails_pending_and_tells_the_handler(self):
        d = self.protocol.identify(SETTINGS)
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, ConnectionDone)
        self.assertEqual(len(self.handler.closed), 1)
        self.assertEqual(self.protocol.state, "closed")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_http_port_is_refused(self):
        self.receive(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertTrue(self.transport.disconnected)


class HeartbeatTests(ProtocolTestCase):
    def test_heartbeat_is_answered_with_nop(self):
        self.subscribed()
        self.receive(nsqframes.HEARTBEAT)
        self.assertEqual(self.sent(), b"NOP\n")

    def test_silence_for_two_intervals_drops_the_connection(self):
        self.subscribed()
        for _ in range(5):
            self.clock.advance(1.9)
            self.receive(nsqframes.HEARTBEAT)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(2.0)
        self.assertTrue(self.transport.disconnected)


class MessageTests(ProtocolTestCase):
    def test_messages_reach_the_handler_split_or_batched(self):
        self.subscribed()
        other = b"fedcba9876543210"
        data = nsqframes.message(MESSAGE_ID, b"one") + nsqframes.message(other, b"two", attempts=2)
        self.receive(data[:7])
        self.receive(data[7:30])
        self.assertEqual(self.handler.messages, [])
        self.receive(data[30:])
        self.assertEqual([(m.id, m.body, m.attempts) for m in self.handler.messages],
                         [(MESSAGE_ID, b"one", 1), (other, b"two", 2)])
        self.assertEqual(self.protocol.in_flight, {MESSAGE_ID, other})

    def test_fin_req_touch_echo_the_id(self):
        self.subscribed()
        self.receive(nsqframes.message(MESSAGE_ID, b"x"))
        self.protocol.touch(MESSAGE_ID)
        self.protocol.requeue(MESSAGE_ID, 2.5)
        self.assertEqual(self.sent(), b"TOUCH 0a1b2c3d4e5f6789\nREQ 0a1b2c3d4e5f6789 2500\n")
        self.assertEqual(self.protocol.in_flight, set())
        self.receive(nsqframes.message(MESSAGE_ID, b"x", attempts=2))
        self.protocol.finish(MESSAGE_ID)
        self.assertEqual(self.sent(), b"FIN 0a1b2c3d4e5f6789\n")

    def test_non_fatal_errors_keep_the_connection(self):
        self.subscribed()
        pending = self.protocol.publish("psd_dead", b"x")
        for code in (b"E_FIN_FAILED", b"E_REQ_FAILED", b"E_TOUCH_FAILED"):
            self.receive(nsqframes.error(code + b" message not in flight"))
        self.assertFalse(self.transport.disconnecting)
        self.assertNoResult(pending)
        self.receive(nsqframes.OK)
        self.successResultOf(pending)

    def test_other_errors_are_fatal(self):
        self.subscribed()
        self.receive(nsqframes.error(b"E_INVALID cannot RDY in current state"))
        self.assertTrue(self.transport.disconnecting)
        self.protocol.finish(MESSAGE_ID)
        self.assertEqual(self.sent(), b"")

    def test_short_message_frame_drops_the_connection(self):
        self.subscribed()
        self.receive(nsqframes.frame(framing.FRAME_MESSAGE, b"\x00" * 10))
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.handler.messages, [])


class ReadyTests(ProtocolTestCase):
    def test_rdy_only_when_subscribed_and_changed(self):
        self.protocol.set_rdy(5)
        self.assertEqual(self.sent(), b"  V2")
        self.subscribed()
        self.protocol.set_rdy(5)
        self.protocol.set_rdy(5)
        self.protocol.set_rdy(0)
        self.assertEqual(self.sent(), b"RDY 5\nRDY 0\n")

    def test_rdy_never_above_max_rdy_count(self):
        self.subscribed(max_rdy_count=3)
        self.protocol.set_rdy(100)
        self.assertEqual(self.sent(), b"RDY 3\n")
        self.assertEqual(self.protocol.rdy, 3)


class CloseTests(ProtocolTestCase):
    def test_cls_waits_for_close_wait_and_still_answers_messages(self):
        self.subscribed()
        self.protocol.set_rdy(10)
        self.receive(nsqframes.message(MESSAGE_ID, b"x"))
        self.sent()
        d = self.protocol.close()
        self.assertEqual(self.sent(), b"CLS\n")
        self.assertEqual(self.protocol.state, "closing")
        self.assertEqual(self.protocol.rdy, 0)
        self.assertNoResult(d)
        self.receive(nsqframes.response(b"CLOSE_WAIT"))
        self.assertEqual(self.successResultOf(d), b"CLOSE_WAIT")
        self.protocol.set_rdy(3)
        self.protocol.finish(MESSAGE_ID)
        self.assertEqual(self.sent(), b"FIN 0a1b2c3d4e5f6789\n")
        self.protocol.disconnect()
        self.assertTrue(self.transport.disconnecting)

    def test_cls_before_subscribing_is_not_sent(self):
        self.sent()
        self.successResultOf(self.protocol.close())
        self.assertEqual(self.sent(), b"")
