"""NSQ V2 framing: commands byte for byte, frames however the bytes arrive."""

import json
import struct

from twisted.trial.unittest import SynchronousTestCase

from psd.nsq import framing
from tests import nsqframes

MESSAGE_ID = b"0a1b2c3d4e5f6789"


class CommandTests(SynchronousTestCase):
    def test_simple_commands(self):
        self.assertEqual(framing.subscribe("psd", "psd#ephemeral"), b"SUB psd psd#ephemeral\n")
        self.assertEqual(framing.ready(17), b"RDY 17\n")
        self.assertEqual(framing.finish(MESSAGE_ID), b"FIN 0a1b2c3d4e5f6789\n")
        self.assertEqual(framing.touch(MESSAGE_ID), b"TOUCH 0a1b2c3d4e5f6789\n")
        self.assertEqual(framing.NOP, b"NOP\n")
        self.assertEqual(framing.CLS, b"CLS\n")

    def test_requeue_delay_is_never_negative(self):
        """REQ with -1 is fatal in nsqd; the delay is mandatory."""
        self.assertEqual(framing.requeue(MESSAGE_ID, 1500), b"REQ 0a1b2c3d4e5f6789 1500\n")
        self.assertEqual(framing.requeue(MESSAGE_ID, -1), b"REQ 0a1b2c3d4e5f6789 0\n")

    def test_bodies_are_length_prefixed(self):
        command = framing.publish("psd_dead", b"hello")
        self.assertEqual(command, b"PUB psd_dead\n" + struct.pack(">L", 5) + b"hello")
        command = framing.identify({"b": 1, "a": "x"})
        body = b'{"a": "x", "b": 1}'
        self.assertEqual(command, b"IDENTIFY\n" + struct.pack(">L", len(body)) + body)
        self.assertEqual(json.loads(command[13:]), {"a": "x", "b": 1})

    def test_names_cannot_inject_parameters(self):
        for bad in ("", "a b", "a\nFIN x", "x" * 65, "ünïcode", "a#b"):
            self.assertRaises(ValueError, framing.subscribe, bad, "psd")
            self.assertRaises(ValueError, framing.subscribe, "psd", bad)
            self.assertRaises(ValueError, framing.publish, bad, b"")

    def test_message_ids_must_be_sixteen_plain_bytes(self):
        for bad in (b"short", MESSAGE_ID + b"0", b"0a1b2c3d 4e5f678", b"0a1b2c3d\n4e5f678"):
            self.assertRaises(ValueError, framing.finish, bad)
            self.assertRaises(ValueError, framing.requeue, bad, 0)

    def test_ready_count_must_be_a_natural_number(self):
        self.assertRaises(ValueError, framing.ready, -1)
        self.assertRaises(ValueError, framing.ready, True)


class DecoderTests(SynchronousTestCase):
    def setUp(self):
        self.stream = (nsqframes.OK + nsqframes.HEARTBEAT + nsqframes.message(MESSAGE_ID, b'{"x":1}', attempts=3)
                       + nsqframes.error(b"E_FIN_FAILED FIN 0a1b2c3d4e5f6789 failed"))
        self.expected = [
            framing.Frame(framing.FRAME_RESPONSE, b"OK"),
            framing.Frame(framing.FRAME_RESPONSE, b"_heartbeat_"),
            framing.Frame(framing.FRAME_MESSAGE,
                          framing.MESSAGE_HEADER.pack(1458061005 * 10**9, 3, MESSAGE_ID) + b'{"x":1}'),
            framing.Frame(framing.FRAME_ERROR, b"E_FIN_FAILED FIN 0a1b2c3d4e5f6789 failed"),
        ]

    def test_several_frames_in_one_read(self):
        self.assertEqual(framing.FrameDecoder().feed(self.stream), self.expected)

    def test_every_split_point(self):
        """Frames split anywhere, including inside the size and type fields."""
        for cut in range(len(self.stream) + 1):
            decoder = framing.FrameDecoder()
            frames = decoder.feed(self.stream[:cut]) + decoder.feed(self.stream[cut:])
            self.assertEqual(frames, self.expected, f"split at {cut}")

    def test_one_byte_at_a_time(self):
        decoder = framing.FrameDecoder()
        frames = [f for i in range(len(self.stream)) for f in decoder.feed(self.stream[i:i + 1])]
        self.assertEqual(frames, self.expected)

    def test_size_counts_the_type_field(self):
        self.assertEqual(nsqframes.OK, b"\x00\x00\x00\x06\x00\x00\x00\x00OK")
        self.assertEqual(framing.FrameDecoder().feed(nsqframes.OK[:-1]), [])

    def test_http_port_is_recognised(self):
        error = self.assertRaises(framing.FramingError, framing.FrameDecoder().feed, b"HTTP/1.1 400 Bad Request\r\n")
        self.assertIn("HTTP port", str(error))

    def test_oversized_and_undersized_frames(self):
        self.assertRaises(framing.FramingError, framing.FrameDecoder(max_frame_size=100).feed,
                          struct.pack(">ll", 101, 0))
        self.assertRaises(framing.FramingError, framing.FrameDecoder().feed, struct.pack(">ll", 3, 0))


class MessageTests(SynchronousTestCase):
    def test_decode(self):
        data = framing.MESSAGE_HEADER.pack(1458061005123456789, 65535, MESSAGE_ID) + b"body"
        message = framing.decode_message(data)
        self.assertEqual(message, framing.Message(1458061005123456789, 65535, MESSAGE_ID, b"body"))

    def test_id_is_kept_byte_for_byte(self):
        """IDs are opaque: even bytes that are not hex come back unchanged."""
        odd_id = b"\xff\x00ABCDEFGHIJKLMN"
        message = framing.decode_message(framing.MESSAGE_HEADER.pack(0, 1, odd_id))
        self.assertEqual(message.id, odd_id)
        self.assertEqual(message.body, b"")

    def test_short_message(self):
        self.assertRaises(framing.FramingError, framing.decode_message, b"\x00" * 25)
