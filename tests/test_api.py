"""The HTTP API end to end: psd assembled by tap.makeService, a real redis-server."""

from __future__ import annotations

import random

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.psdfixture import started_psd
from tests.redisfixture import RedisServer

SEED_TS = 1458061005
POINT = {"uid": 1, "atid": 3, "metric": "points", "value": 10, "ts": SEED_TS}


class APITestCase(TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        self.server = RedisServer(self)
        yield self.server.start()
        self.psd = yield started_psd(self, self.server)


class WriteAndSumTests(APITestCase):
    @defer.inlineCallbacks
    def test_seed_example(self):
        status, body, _ = yield self.psd.post("/v1/points", [
            POINT, {**POINT, "value": 11, "ts": SEED_TS + 3}, {**POINT, "value": 1, "ts": SEED_TS + 6}])
        self.assertEqual((status, body), (200, {"written": 3, "duplicates": 0}))
        status, body, _ = yield self.psd.get(f"/v1/sum?uids=1,2&metrics=points,steps&atid=3&from={SEED_TS}&to={SEED_TS + 5}")
        self.assertEqual((status, body), (200, {"from": SEED_TS, "to": SEED_TS + 5, "atid": 3, "results": {
            "1": {"points": 21, "steps": 0}, "2": {"points": 0, "steps": 0}}}))
        status, body, _ = yield self.psd.post("/v1/sum", {"uids": [1], "metrics": ["points"], "from": SEED_TS, "to": SEED_TS + 6})
        self.assertEqual(body["results"], {"1": {"points": 22}})
        self.assertEqual(body["atid"], 0)

    @defer.inlineCallbacks
    def test_single_point_object(self):
        status, body, _ = yield self.psd.post("/v1/points", POINT)
        self.assertEqual((status, body), (200, {"written": 1, "duplicates": 0}))

    @defer.inlineCallbacks
    def test_invalid_point_writes_nothing_of_the_batch(self):
        status, body, _ = yield self.psd.post("/v1/points", [POINT, {**POINT, "value": True}])
        self.assertEqual((status, body), (400, {"error": "value must be an integer", "index": 1}))
        status, body, _ = yield self.psd.post("/v1/sum", {"uids": [1], "metrics": ["points"], "from": 0, "to": 2**33 - 1})
        self.assertEqual(body["results"], {"1": {"points": 0}})
        self.assertEqual(self.server.call("DBSIZE"), b":0\r\n")

    @defer.inlineCallbacks
    def test_bad_bodies_are_400(self):
        for raw in (b"", b"nope", b'{"uid": NaN}', b"[1.5]", b'{"uid": 1, "uid": 1}', b"[]", b'"\\ud800"',
                    b'[{"uid": 1, "metric": "points", "value": 1.0, "ts": 1}]'):
            status, body, response = yield self.psd.post("/v1/points", raw=raw)
            self.assertEqual(status, 400, raw)
            self.assertIsInstance(body["error"], str)
            self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/json"])

    @defer.inlineCallbacks
    def test_too_many_points(self):
        status, body, _ = yield self.psd.post("/v1/points", [POINT] * 10001)
        self.assertEqual((status, body["error"]), (400, "at most 10000 points per request"))

    @defer.inlineCallbacks
    def test_bad_queries_are_400(self):
        for query in ("uids=1&metrics=points&from=5&to=4", "uids=1&metrics=bogus&from=1&to=2",
                      "metrics=points&from=1&to=2", "uids=x&metrics=points&from=1&to=2",
                      "uids=1&metrics=points&from=1", "uids=1&metrics=points&from=1&to=99999999999999"):
            status, body, _ = yield self.psd.get("/v1/sum?" + query)
            self.assertEqual(status, 400, query)
            self.assertIn("error", body)
        status, body, _ = yield self.psd.post("/v1/sum", {"uids": list(range(10001)), "metrics": ["points"], "from": 1, "to": 2})
        self.assertEqual((status, body["error"]), (400, "at most 10000 uids per query"))
        status, body, _ = yield self.psd.post("/v1/sum", [1])
        self.assertEqual(status, 400)

    @defer.inlineCallbacks
    def test_idempotency_key_header(self):
        for expected in ({"written": 1, "duplicates": 0}, {"written": 0, "duplicates": 1}):
            status, body, _ = yield self.psd.post("/v1/points", POINT, headers={"Idempotency-Key": "req-1"})
            self.assertEqual((status, body), (200, expected))
        status, body, _ = yield self.psd.post("/v1/points", POINT, headers={"Idempotency-Key": "a{b}"})
        self.assertEqual(status, 400)

    @defer.inlineCallbacks
    def test_offsets_shift_one_users_window(self):
        yield self.psd.post("/v1/points", [{**POINT, "uid": 1}, {**POINT, "uid": 2, "ts": SEED_TS + 3600}])
        status, body, _ = yield self.psd.post("/v1/sum", {"uids": [1, 2], "metrics": ["points"], "from": SEED_TS,
                                                          "to": SEED_TS, "offsets": {"2": 3600}})
        self.assertEqual(body["results"], {"1": {"points": 10}, "2": {"points": 10}})
        status, body, _ = yield self.psd.post("/v1/sum", {"uids": [1], "metrics": ["points"], "from": 0, "to": 10,
                                                          "offsets": {"1": -100}})
        self.assertEqual((status, body["results"]), (200, {"1": {"points": 0}}))

    @defer.inlineCallbacks
    def test_unknown_route_and_method(self):
        status, body, _ = yield self.psd.get("/nope")
        self.assertEqual((status, body), (404, {"error": "no such route"}))
        status, body, _ = yield self.psd.get("/v1/points")
        self.assertEqual(status, 405)


class HealthTests(APITestCase):
    @defer.inlineCallbacks
    def test_health_follows_redis(self):
        status, body, _ = yield self.psd.get("/health")
        self.assertEqual((status, body), (200, {"status": "ok", "redis": "ok"}))
        status, body, _ = yield self.psd.get("/health/ping")
        self.assertEqual((status, body), (200, {"pong": "OK"}))
        self.server.kill()
        status, body, _ = yield self.psd.get("/health")
        self.assertEqual((status, body["status"]), (503, "unavailable"))
        status, body, response = yield self.psd.post("/v1/points", POINT)
        self.assertEqual(status, 503)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])


class RandomCrossCheckTests(APITestCase):
    @defer.inlineCallbacks
    def test_random_points_and_ranges_match_brute_force(self):
        """4,000 random points over two years, 300 random ranges: every sum exact."""
        rng = random.Random(20160315)
        start, span = 1420070400, 2 * 366 * 86400  # 2015-01-01 and two years on
        points = [{"uid": rng.randrange(3), "atid": rng.randrange(3), "metric": rng.choice(["points", "steps"]),
                   "value": rng.randrange(-50, 1000), "ts": start + rng.choice([rng.randrange(span), rng.randrange(3600)])}
                  for _ in range(4000)]
        for i in range(0, len(points), 500):
            status, body, _ = yield self.psd.post("/v1/points", points[i:i + 500])
            self.assertEqual(status, 200)
        for _ in range(300):
            a = start + rng.randrange(-86400, span)
            b = a + rng.choice([0, 1, 59, 3600, rng.randrange(86400 * 40), rng.randrange(span)])
            atid = rng.randrange(3)
            status, body, _ = yield self.psd.post("/v1/sum", {"uids": [0, 1, 2], "metrics": ["points", "steps"],
                                                              "atid": atid, "from": a, "to": b})
            self.assertEqual(status, 200)
            for uid in range(3):
                for metric in ("points", "steps"):
                    expected = sum(p["value"] for p in points if p["uid"] == uid and p["metric"] == metric
                                   and (atid == 0 or p["atid"] == atid) and a <= p["ts"] <= b)
                    self.assertEqual(body["results"][str(uid)][metric], expected, (uid, metric, atid, a, b))
