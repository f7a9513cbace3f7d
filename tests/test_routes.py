"""Every route of the app, as Klein routes it: declared scopes, tokens, body types, unknown fields.

The routes are enumerated from the app's url map, so a new route is covered
(and must be given a sample request below) without anyone remembering to.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from psd.api import API
from psd.model import UnitResult
from psd.routes import JSON_BODY, OPEN, WRITE, Tokens, scopes
from psd.web import GuardedSite, RequestGuard

FORM = "application/x-www-form-urlencoded"
PATH_VALUES = {"uid": "1", "thing": "points", "atid": "all", "start_ts": "0", "end_ts": "10", "prefix": "c"}
#: endpoint -> (query string, body, content type): a valid request of each route.
SAMPLES = {
    "ping": ("", None, None),
    "health": ("", None, None),
    "write_points": ("", {"uid": 1, "metric": "points", "value": 1, "ts": 5}, "application/json"),
    "sum_get": ("uids=1&metrics=points&from=0&to=10", None, None),
    "sum_post": ("", {"uids": [1], "metrics": ["points"], "from": 0, "to": 10}, "application/json"),
    "series": ("uid=1&metric=points&from=0&to=10&step=day", None, None),
    "leaderboard": ("", {"uids": [1], "metric": "points", "from": 0, "to": 10}, "application/json"),
    "write_counts": ("", {"name": "signups", "value": 1, "ts": 5}, "application/json"),
    "read_counts": ("names=signups&from=0&to=10", None, None),
    "compat_write": ("", {"thing": "points", "uid": 1, "value": 5, "ts2": 10}, "application/json"),
    "compat_query": ("", None, None),
    "compat_query_ids": ("", "ids=1", FORM),
    "compat_mu_query": ("", "ids=1", FORM),
    "compat_mumt_query": ("", "ids=1&things=points", FORM),
    "compat_mumt_query_v2": ("", "ids=1&things=points&offsets=0", FORM),
    "compat_readcount": ("", None, None),
    "compat_readcount_with_ids": ("", "ids=1", FORM),
    "openapi_document": ("", None, None),
}


class RecordingWriter:
    def __init__(self):
        self.units = []

    def submit(self, unit):
        self.units.append(unit)
        return defer.succeed(UnitResult(1, 0))


class PendingReader:
    """Every read waits forever: a read route runs, but never answers."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: defer.Deferred()


class UpStore:
    def ping(self):
        return defer.succeed(True)


def routes():
    """(endpoint, method, path) of every route in the url map."""
    for rule in API.app.url_map.iter_rules():
        path = re.sub(r"<(\w+)>", lambda m: PATH_VALUES[m.group(1)], rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule.endpoint, method, path


def variants(path: str) -> list[str]:
    """The path as an attacker may spell it: encoded characters, doubled and encoded slashes."""
    segments = path.strip("/").split("/")
    every_char = "/" + "/".join("".join("%%%02x" % ord(c) for c in segment) for segment in segments)
    first_char = "/" + "/".join(quote(s[0], safe="") if s[0].isdigit() else "%%%02X" % ord(s[0]) + s[1:]
                                for s in segments)
    return [path, every_char, first_char, "/" + path, path.replace("/", "//"), path + "/",
            "/" + "%2F".join(segments), "/" + "%2f".join(segments), path.replace("/", "/./", 1)]


class Harness:
    def __init__(self, tokens: Tokens):
        self.writer = RecordingWriter()
        api = API(self.writer, PendingReader(), UpStore(), frozenset({"points", "steps"}), tokens=tokens)
        self.site = GuardedSite(RequestGuard(api.resource()), MemoryReactorClock(), max_body_bytes=100000,
                                request_timeout=5, max_connections=10**6)

    def send(self, method: str, path: str, query: str = "", body=None, content_type=None, token=None) -> bytes:
        """The raw answer ("" when the route has not answered)."""
        if isinstance(body, dict):
            body = json.dumps(body)
        content = (body or "").encode()
        head = f"{method} {path}{'?' + query if query else ''} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(content)}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(head.encode() + b"\r\n" + content)
        return transport.value()

    def sample(self, endpoint: str, method: str, path: str, token=None) -> bytes:
        query, body, content_type = SAMPLES[endpoint]
        return self.send(method, path, query, body, content_type, token)


def status(answer: bytes):
    return int(answer.split(b" ", 2)[1]) if answer else None


def body_of(answer: bytes):
    return json.loads(answer.partition(b"\r\n\r\n")[2])


class ScopeTests(SynchronousTestCase):
    def test_every_route_has_a_declared_scope_and_a_sample(self):
        declared = scopes(API)
        self.assertEqual({e for e, s in declared.items() if s is None}, set(), "routes without @declared(scope)")
        self.assertEqual(set(declared) - set(SAMPLES), set(), "give each new route a sample request here")

    def test_the_routes_that_write_are_the_routes_declared_write(self):
        """Run every route with full access; those that reached the writer must be declared WRITE."""
        harness = Harness(Tokens(write="w", read="r"))
        writing, declared = set(), scopes(API)
        for endpoint, method, path in routes():
            before = len(harness.writer.units)
            answer = harness.sample(endpoint, method, path, token="w")
            self.assertIn(status(answer), (None, 200), (endpoint, answer))  # valid samples: the handler ran
            if len(harness.writer.units) > before:
                writing.add(endpoint)
        self.assertEqual(writing, {e for e, s in declared.items() if s == WRITE})

    def test_no_spelling_of_a_path_writes_without_the_write_token(self):
        harness = Harness(Tokens(write="w", read="r"))
        write_routes = [(e, m, p) for e, m, p in routes() if scopes(API)[e] == WRITE]
        self.assertEqual(len(write_routes), 3)
        for endpoint, method, path in write_routes:
            for spelled in variants(path):
                for token in (None, "r", "wrong"):
                    answer = harness.sample(endpoint, method, spelled, token=token)
                    self.assertIn(status(answer), (401, 404), (spelled, token, answer))
                    if status(answer) == 404:  # not routed, and said so in JSON without echoing Host
                        self.assertNotIn(b"Location", answer)
                        self.assertIn("no such route", body_of(answer)["error"])
        self.assertEqual(harness.writer.units, [])
        for endpoint, method, path in write_routes:
            self.assertEqual(status(harness.sample(endpoint, method, path, token="w")), 200)
        for encoded in ("/v1/%70oints", "//v1/points", "/%76%31/%70%6f%69%6e%74%73"):  # routed, so refused
            self.assertEqual(status(harness.sample("write_points", "POST", encoded)), 401, encoded)

    def test_read_routes_need_the_read_or_write_token(self):
        harness = Harness(Tokens(write="w", read="r"))
        for endpoint, method, path in routes():
            if scopes(API)[endpoint] in (OPEN, WRITE):
                continue
            for spelled in variants(path):
                self.assertIn(status(harness.sample(endpoint, method, spelled)), (401, 404), (endpoint, spelled))
            for token in ("r", "w"):
                self.assertIn(status(harness.sample(endpoint, method, path, token=token)), (None, 200), endpoint)

    def test_the_401_answer(self):
        answer = Harness(Tokens(write="w")).sample("write_points", "POST", "/v1/points")
        head, _, content = answer.partition(b"\r\n\r\n")
        self.assertEqual(content, b'{"error":"a valid bearer token is required"}')
        self.assertIn(b'WWW-Authenticate: Bearer realm="psd"', head)

    def test_health_answers_without_a_token_and_gives_details_with_it(self):
        harness = Harness(Tokens(write="w", read="r"))
        self.assertEqual(body_of(harness.send("GET", "/health/ping")), {"pong": "OK"})
        self.assertEqual(body_of(harness.send("GET", "/health")), {"status": "ok"})
        self.assertEqual(body_of(harness.send("GET", "/health", token="r")), {"status": "ok", "redis": "ok"})
        self.assertEqual(body_of(Harness(Tokens()).send("GET", "/health")), {"status": "ok", "redis": "ok"})


class InputTests(SynchronousTestCase):
    def setUp(self):
        self.harness = Harness(Tokens())

    def test_json_routes_take_only_json(self):
        json_routes = [(e, m, p) for e, m, p in routes() if getattr(getattr(API, e), "body", None) == JSON_BODY]
        self.assertEqual(len(json_routes), 5)
        for endpoint, method, path in json_routes:
            query, body, _ = SAMPLES[endpoint]
            for content_type in (None, "text/plain", FORM, "multipart/form-data; boundary=x"):
                answer = self.harness.send(method, path, query, body, content_type)
                self.assertEqual((status(answer), body_of(answer)),
                                 (415, {"error": "Content-Type must be application/json"}), (endpoint, content_type))
            self.assertIn(status(self.harness.send(method, path, query, body, "Application/JSON; charset=utf-8")),
                          (None, 200))
        self.assertEqual(self.harness.writer.units[0:0], [])
        self.assertEqual(len(self.harness.writer.units), 3)

    def test_unknown_query_and_form_fields_are_400_everywhere(self):
        for endpoint, method, path in routes():
            query, body, content_type = SAMPLES[endpoint]
            answer = self.harness.send(method, path, (query + "&" if query else "") + "atdi=3", body, content_type)
            self.assertEqual((status(answer), body_of(answer)), (400, {"error": "unknown parameter 'atdi'"}), endpoint)
            if content_type == FORM:
                answer = self.harness.send(method, path, query, body + "&idz=2", content_type)
                self.assertEqual(status(answer), 400, endpoint)

    def test_unknown_body_fields_of_sum_are_400(self):
        query, body, content_type = SAMPLES["sum_post"]
        answer = self.harness.send("POST", "/v1/sum", query, {**body, "atdi": 3}, content_type)
        self.assertEqual((status(answer), body_of(answer)), (400, {"error": "unknown field 'atdi'"}))

    def test_405_says_what_is_allowed(self):
        answer = self.harness.send("GET", "/v1/points")
        self.assertEqual(status(answer), 405)
        self.assertIn(b"\r\nAllow: POST\r\n", answer)
        self.assertIn(b"\r\nAllow: GET, HEAD, POST\r\n", self.harness.send("PUT", "/v1/sum"))

    def test_an_empty_segment_is_a_json_404_that_never_echoes_host(self):
        answer = self.harness.send("POST", "/v1//points", "", SAMPLES["write_points"][1], "application/json")
        self.assertEqual(status(answer), 404)
        self.assertNotIn(b"Location", answer)
        self.assertNotIn(b"evil", answer)
        self.assertEqual(self.harness.writer.units, [])


class OpenAPITests(SynchronousTestCase):
    def test_operations_have_ids_and_the_security_of_their_route(self):
        from psd.openapi import document
        paths = document(["points"], 10, 10)["paths"]
        ids = [operation["operationId"] for item in paths.values() for operation in item.values()]
        self.assertEqual(len(ids), len(set(ids)))
        for rule in API.app.url_map.iter_rules():
            item = paths[re.sub(r"<(\w+)>", r"{\1}", rule.rule)]
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                operation = item[method.lower()]
                if scopes(API)[rule.endpoint] == OPEN:
                    self.assertEqual(operation["security"], [], rule.rule)
                else:
                    self.assertEqual((operation["security"], "401" in operation["responses"]),
                                     ([{"bearer": []}], True), rule.rule)
