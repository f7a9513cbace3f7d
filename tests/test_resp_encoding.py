"""psd's command encoder writes exactly the bytes txredisapi's own would."""

from __future__ import annotations

import txredisapi
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.abstract import FileDescriptor
from twisted.internet.error import ConnectionAborted
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from psd.store import FastEncodingProtocol
from tests.redisfixture import RedisServer, started_store

ARGS = st.lists(st.one_of(st.text(), st.binary(), st.integers(min_value=-(2**70), max_value=2**70), st.booleans(),
                          st.floats(allow_nan=False, allow_infinity=False)), max_size=8)


class EncodingTests(SynchronousTestCase):
    @given(ARGS)
    def test_same_bytes_as_txredisapi(self, args):
        self.assertEqual(FastEncodingProtocol()._build_command(*args), txredisapi.RedisProtocol()._build_command(*args))

    def test_unencodable_text_is_refused_the_same_way(self):
        self.assertRaises(txredisapi.InvalidData, FastEncodingProtocol()._build_command, "\ud800")


class ConnectedStoreTests(TestCase):
    @defer.inlineCallbacks
    def test_the_store_connections_use_it(self):
        server = RedisServer(self)
        yield server.start()
        store = yield started_store(self, server)
        connections = [c for pool in store._pools.values() for c in pool._factory.pool]
        self.assertEqual({type(c) for c in connections}, {FastEncodingProtocol})
        self.assertEqual(len(connections), 3)


class UnsentCommandsTests(SynchronousTestCase):
    def test_unsent_commands_are_released_when_the_connection_is_lost(self):
        """A reply timeout aborts a connection with a large read unsent: the transport must not keep it."""
        transport = FileDescriptor(reactor=MemoryReactor())
        transport.connected = True
        protocol = FastEncodingProtocol()
        protocol.makeConnection(transport)
        reply = protocol.execute_command("EVALSHA", "k" * 1_000_000, 0)
        self.assertGreater(transport._tempDataLen, 1_000_000)
        protocol.connectionLost(Failure(ConnectionAborted()))
        self.failureResultOf(reply, txredisapi.ConnectionError)
        self.assertEqual((transport._tempDataLen, transport._tempDataBuffer, transport.dataBuffer), (0, [], b""))
