"""Authorization: the tokens of each scope, and no spelling of a path gets past its token (a real psd)."""

from __future__ import annotations

import re
import socket
from urllib.parse import quote

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase

from psd.routes import OPEN, READ as READ_SCOPE, WRITE as WRITE_SCOPE, Tokens
from psd.api import API
from tests.psdfixture import started_psd
from tests.redisfixture import StoreTestCase

WRITE, READ = "w-s3cret", "r-s3cret"  # the tokens


class TokensTests(SynchronousTestCase):
    def test_scopes(self):
        both = Tokens(write=WRITE, read=READ)
        cases = [(WRITE_SCOPE, WRITE, True), (WRITE_SCOPE, READ, False), (WRITE_SCOPE, None, False),
                 (READ_SCOPE, READ, True), (READ_SCOPE, WRITE, True), (READ_SCOPE, None, False),
                 (READ_SCOPE, "r-s3cre", False), (OPEN, None, True)]
        for scope, token, allowed in cases:
            header = None if token is None else b"Bearer " + token.encode()
            self.assertEqual(both.permits(scope, header), allowed, (scope, token))

    def test_only_a_read_token_guards_writes_too(self):
        tokens = Tokens(read=READ)
        self.assertFalse(tokens.permits(WRITE_SCOPE, None))
        self.assertTrue(tokens.permits(WRITE_SCOPE, b"bearer " + READ.encode()))

    def test_only_a_write_token_leaves_reads_open(self):
        tokens = Tokens(write=WRITE)
        self.assertTrue(tokens.permits(READ_SCOPE, None))
        self.assertFalse(tokens.permits(WRITE_SCOPE, b"Bearer wrong"))

    def test_no_token_opens_everything_and_headers_must_be_bearer(self):
        self.assertTrue(Tokens().permits(WRITE_SCOPE, None))
        for header in (b"Basic " + WRITE.encode(), WRITE.encode(), b"Bearer ", b"Bearer"):
            self.assertFalse(Tokens(write=WRITE).permits(WRITE_SCOPE, header), header)


def concrete_paths() -> list[tuple[str, str]]:
    """(method, path) for every route, path arguments filled in."""
    paths = []
    for rule in API.app.url_map.iter_rules():
        path = re.sub(r"<(\w+:)?(\w+)>", lambda m: {"atid": "all", "thing": "points"}.get(m.group(2), "1"), rule.rule)
        paths += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return paths


def spellings(path: str) -> list[str]:
    """The same route written the ways an attacker would: every letter encoded, doubled and encoded slashes."""
    encoded_letters = "".join(quote(c, safe="") if c == "/" else "%%%02X" % ord(c) for c in path)
    one_letter = re.sub(r"(/v\d/)(\w)", lambda m: m.group(1) + "%%%02x" % ord(m.group(2)), path, count=1)
    return [path, "/" + path, path.replace("/", "//"), one_letter, encoded_letters.replace("%2F", "/"),
            path.replace("/", "%2F", 2).replace("%2F", "/", 1), path + "/", path.replace("/v1/", "/v1/./")]


BODIES = {"/v1/points": b'{"uid": 5, "metric": "points", "value": 1, "ts": 1458061005}',
          "/v1/counts": b'{"name": "xs", "value": 1, "ts": 1458061005}',
          "/v1/write": b'{"thing": "points", "uid": 5, "atid": 1, "value": 1, "ts1": 1458061005, "ts2": 1458061005}'}


def raw_request(port: int, method: str, path: str, body: bytes, token) -> int:
    """The status of one request sent byte for byte as given (no client normalizes the path)."""
    headers = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n" \
              f"Content-Length: {len(body)}\r\nConnection: close\r\n"
    if token:
        headers += f"Authorization: Bearer {token}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(headers.encode() + b"\r\n" + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


class EverySpellingTests(StoreTestCase):
    timeout = 240

    @defer.inlineCallbacks
    def test_no_path_spelling_writes_without_the_write_token(self):
        config = self.mktemp()
        with open(config, "w") as f:
            f.write(f'[http]\ntoken = "{WRITE}"\nread_token = "{READ}"\n')
        psd = yield started_psd(self, self.server, "--config", config)
        port = int(psd.base.rsplit(":", 1)[1])
        attempts = [(m, p, s) for m, p in concrete_paths() for s in spellings(p)]
        self.assertGreater(len(attempts), 100)

        def probe(token):
            return [(raw_request(port, m, s, BODIES.get(p, b"{}"), token), m, p, s) for m, p, s in attempts]

        for token in (None, READ):
            answers = yield threads.deferToThread(probe, token)
            accepted = [(m, s) for code, m, p, s in answers if code < 300 and p in BODIES]
            self.assertEqual(self.server.call("DBSIZE"), b":0\r\n", f"written with token {token}: {accepted}")
            self.assertEqual(accepted, [])
            if token is None:  # reads are guarded too: only /health and /health/ping answer without a token
                self.assertEqual({p for code, m, p, s in answers if code < 300}, {"/health", "/health/ping"})
        answers = yield threads.deferToThread(probe, WRITE)
        self.assertEqual({p for code, m, p, s in answers if code == 200 and p in BODIES}, set(BODIES))
        self.assertNotEqual(self.server.call("DBSIZE"), b":0\r\n")


class HealthWithoutTokenTests(StoreTestCase):
    @defer.inlineCallbacks
    def test_health_answers_without_a_token_and_details_need_it(self):
        config = self.mktemp()
        with open(config, "w") as f:
            f.write(f'[http]\nread_token = "{READ}"\n')
        psd = yield started_psd(self, self.server, "--config", config)
        status, body, _ = yield psd.get("/health")
        self.assertEqual((status, body), (200, {"status": "ok"}))
        status, body, _ = yield psd.get("/health", headers={"Authorization": f"Bearer {READ}"})
        self.assertEqual((status, body), (200, {"status": "ok", "redis": "ok"}))
        status, body, _ = yield psd.get("/health/ping")
        self.assertEqual((status, body), (200, {"pong": "OK"}))
        status, body, response = yield psd.get("/v1/sum?uids=1&metrics=points&from=1&to=2")
        self.assertEqual((status, body), (401, {"error": "a valid bearer token is required"}))
        self.assertEqual(response.headers.getRawHeaders("WWW-Authenticate"), ['Bearer realm="psd"'])

