"""Every query route through HTTP against a real redis-server, checked against a Python model."""

from __future__ import annotations

import calendar
import json
import random
import re
from datetime import datetime
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import treq
from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.server import Site

from psd.api import API
from psd.cost import DEFAULT_MAX_READS
from psd.validation import MAX_TS
from psd.keys import Layout
from psd.leaderboard import standings
from psd.model import Part, Point, WriteUnit
from psd.reader import Reader
from psd.writer import Writer
from tests.redisfixture import RedisServer, started_store

METRICS = frozenset({"points", "steps", "distance"})
BERLIN = ZoneInfo("Europe/Berlin")


def utc(*fields) -> int:
    return calendar.timegm(fields + (0,) * (6 - len(fields)))


class Model:
    """What psd should answer: every point kept, sums by brute force."""

    def __init__(self):
        self.points: list[Point] = []

    def sum(self, uid: int, metric: str, start: int, end: int, atid: int = 0) -> int:
        return sum(p.value for p in self.points if p.uid == uid and p.metric == metric and start <= p.ts <= end
                   and atid in (0, p.atid))


class QueryTestCase(TestCase):
    """A psd API on a free port over a fresh redis-server; ``self.model`` mirrors what was written."""

    max_reads_per_call = 50  # small, so that every query shape spans several script calls
    max_reads_per_request = DEFAULT_MAX_READS
    parse_forms = True  # psd's own Site (psd.web.GuardedSite) leaves POST forms unparsed

    @defer.inlineCallbacks
    def setUp(self):
        self.server = RedisServer(self)
        yield self.server.start()
        store = yield started_store(self, self.server)
        layout = Layout()
        self.writer = Writer(reactor, store, layout, window=0.001)
        self.api = API(self.writer, Reader(store, layout, self.max_reads_per_call, self.max_reads_per_request), store, METRICS)
        site = Site(self.api.resource(), parsePOSTFormSubmission=self.parse_forms)
        site.displayTracebacks = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.base = f"http://127.0.0.1:{port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self.pool.closeCachedConnections)
        self.model = Model()

    @defer.inlineCallbacks
    def request(self, method: str, path: str, json_body=None, form=None, raw: bytes = None):
        """(status, content type, body bytes)."""
        headers, data = {}, raw
        if raw is not None:  # junk sent as JSON: the routes that take JSON refuse other types with 415 first
            headers[b"Content-Type"] = [b"application/json"]
        if json_body is not None:
            headers[b"Content-Type"], data = [b"application/json"], json.dumps(json_body).encode()
        if form is not None:
            headers[b"Content-Type"], data = [b"application/x-www-form-urlencoded"], urlencode(form).encode()
        response = yield treq.request(method, self.base + path, headers=headers, data=data, pool=self.pool)
        body = yield response.content()
        content_type = response.headers.getRawHeaders(b"Content-Type", [b""])[0].decode()
        return response.code, content_type, body

    @defer.inlineCallbacks
    def ok_json(self, method: str, path: str, **kwargs):
        status, _, body = yield self.request(method, path, **kwargs)
        self.assertEqual(status, 200, body)
        return json.loads(body)

    @defer.inlineCallbacks
    def bad(self, method: str, path: str, **kwargs) -> str:
        """The request gets a 400 with a JSON message; returns the message."""
        status, content_type, body = yield self.request(method, path, **kwargs)
        self.assertEqual((status, content_type), (400, "application/json"), (method, path, kwargs, body))
        message = json.loads(body)["error"]
        self.assertTrue(message)
        return message

    def write(self, *points: Point) -> defer.Deferred:
        """Write points straight through the writer (the HTTP write path has its own tests)."""
        self.model.points.extend(p for p in points if p.total is None)
        return self.writer.submit(WriteUnit((Part(None, tuple(points)),)))

    @defer.inlineCallbacks
    def write_many(self, points: list[Point], batch: int = 2000):
        yield defer.gatherResults([self.write(*points[i:i + batch]) for i in range(0, len(points), batch)])


class SumTests(QueryTestCase):
    @defer.inlineCallbacks
    def test_offsets_move_the_window_across_a_day(self):
        """uid 1 is UTC+1 (+3600), uid 2 is UTC-5: each gets her own local day of 15 March."""
        day = utc(2016, 3, 15)
        yield self.write(Point(1, 0, "points", 10, day - 1), Point(1, 0, "points", 20, day + 86400 - 1),
                         Point(1, 0, "points", 40, day + 86400 + 3599),
                         Point(2, 0, "points", 3, day - 5 * 3600), Point(2, 0, "points", 5, day + 86400 - 5 * 3600))
        answer = yield self.ok_json("POST", "/v1/sum", json_body={
            "uids": [1, 2, 3], "metrics": ["points"], "from": day, "to": day + 86399,
            "offsets": {"1": 3600, "2": -5 * 3600}})
        self.assertEqual(answer["results"], {"1": {"points": 60}, "2": {"points": 3}, "3": {"points": 0}})
        plain = yield self.ok_json("GET", f"/v1/sum?uids=1,2&metrics=points&from={day}&to={day + 86399}")
        self.assertEqual(plain["results"], {"1": {"points": 20}, "2": {"points": 5}})

    @defer.inlineCallbacks
    def test_bad_input(self):
        yield self.bad("POST", "/v1/sum", json_body={"uids": [1], "metrics": ["points"], "from": 0, "to": 1,
                                                     "offsets": {"x": 1}})
        yield self.bad("POST", "/v1/sum", json_body={"uids": [1], "metrics": ["points"], "from": 0, "to": 1,
                                                     "offsets": {"1": 1.5}})
        yield self.bad("GET", "/v1/sum?uids=1&metrics=points&from=5&to=1")


class SeriesTests(QueryTestCase):
    @defer.inlineCallbacks
    def test_berlin_days_around_spring_forward(self):
        """29 March .. 1 April 2024 in Berlin: the 31st is 23 hours long, and the sums follow local midnights."""
        start, end = utc(2024, 3, 28, 23), utc(2024, 4, 1, 22) - 1
        points = [Point(1, 0, "steps", 1 + i % 7, start + i * 1799) for i in range((end - start) // 1799)]
        yield self.write_many(points)
        answer = yield self.ok_json("GET", f"/v1/series?uid=1&metric=steps&from={start}&to={end}&step=day&tz=Europe/Berlin")
        self.assertEqual((answer["step"], answer["tz"]), ("day", "Europe/Berlin"))
        self.assertEqual([e["end"] - e["start"] + 1 for e in answer["series"]], [86400, 86400, 23 * 3600, 86400])
        for entry in answer["series"]:
            self.assertEqual(datetime.fromtimestamp(entry["start"], BERLIN).hour, 0)
            self.assertEqual(entry["value"], self.model.sum(1, "steps", entry["start"], entry["end"]))

    @defer.inlineCallbacks
    def test_leap_day_and_months_utc(self):
        yield self.write(Point(5, 2, "points", 7, utc(2024, 2, 29, 12)), Point(5, 2, "points", 1, utc(2024, 3, 1)),
                         Point(5, 3, "points", 100, utc(2024, 2, 29, 13)))
        days = yield self.ok_json("GET", f"/v1/series?uid=5&metric=points&atid=2&from={utc(2024, 2, 28)}"
                                         f"&to={utc(2024, 3, 2) - 1}&step=day")
        self.assertEqual(days, {"step": "day", "tz": "UTC", "series": [
            {"start": utc(2024, 2, 28), "end": utc(2024, 2, 29) - 1, "value": 0},
            {"start": utc(2024, 2, 29), "end": utc(2024, 3, 1) - 1, "value": 7},
            {"start": utc(2024, 3, 1), "end": utc(2024, 3, 2) - 1, "value": 1}]})
        months = yield self.ok_json("GET", f"/v1/series?uid=5&metric=points&from={utc(2024, 1, 15)}"
                                           f"&to={utc(2024, 3, 10)}&step=month")
        self.assertEqual([(e["start"], e["value"]) for e in months["series"]],
                         [(utc(2024, 1, 15), 0), (utc(2024, 2, 1), 107), (utc(2024, 3, 1), 1)])
        self.assertEqual(months["series"][-1]["end"], utc(2024, 3, 10))

    @defer.inlineCallbacks
    def test_randomized_against_the_model(self):
        rng = random.Random(11)
        base = utc(2023, 12, 20)
        yield self.write_many([Point(rng.randrange(1, 4), rng.randrange(0, 3), rng.choice(["points", "steps"]),
                                     rng.randrange(-3, 50), base + rng.randrange(0, 50 * 86400)) for _ in range(3000)])
        for _ in range(25):
            uid, atid, metric = rng.randrange(1, 4), rng.randrange(0, 3), rng.choice(["points", "steps"])
            step = rng.choice(["minute", "hour", "day", "month"])
            start = base + rng.randrange(-86400, 40 * 86400)
            end = start + rng.randrange(0, 6000 * 60 if step == "minute" else 30 * 86400)
            tz = rng.choice(["UTC", "Europe/Berlin", "Asia/Kolkata", "America/Los_Angeles"])
            answer = yield self.ok_json("GET", f"/v1/series?uid={uid}&atid={atid}&metric={metric}&from={start}"
                                               f"&to={end}&step={step}&tz={tz}")
            for entry in answer["series"]:
                self.assertEqual(entry["value"], self.model.sum(uid, metric, entry["start"], entry["end"], atid))
            self.assertEqual((answer["series"][0]["start"], answer["series"][-1]["end"]), (start, end))

    @defer.inlineCallbacks
    def test_bad_input(self):
        query = "uid=1&metric=points&from=0&to=100&step=day"
        for broken in ("metric=points&from=0&to=100&step=day", query.replace("step=day", "step=week"),
                       query + "&tz=Mars/Base", query + "&tz=../../etc/passwd", query + "&tz=%ff", query.replace("to=100", "to=x"),
                       query.replace("metric=points", "metric=sleep"), query.replace("step=day", "step=second")
                       .replace("to=100", "to=10000")):
            yield self.bad("GET", "/v1/series?" + broken)
        message = yield self.bad("GET", "/v1/series?uid=1&metric=points&from=0&to=10000&step=second")
        self.assertIn("10000 buckets", message)


class LeaderboardTests(QueryTestCase):
    @defer.inlineCallbacks
    def test_ties_compare_to_offsets_and_missing_users(self):
        t = utc(2024, 5, 1)
        yield self.write(Point(1, 0, "points", 50, t + 10), Point(2, 0, "points", 30, t + 20), Point(2, 0, "points", 20, t + 500),
                         Point(3, 0, "points", 40, t + 30), Point(3, 0, "points", 10, t + 600),
                         Point(4, 0, "points", 99, t - 3550))
        answer = yield self.ok_json("POST", "/v1/leaderboard", json_body={
            "uids": [4, 3, 2, 1, 9], "metric": "points", "from": t, "to": t + 3600, "compare_to": t + 100,
            "offsets": {"4": -3600}})
        self.assertEqual(answer, {"total": 5, "entries": [
            {"rank": 1, "uid": "4", "value": 99, "previous_rank": 1, "previous_value": 99},
            {"rank": 2, "uid": "1", "value": 50, "previous_rank": 2, "previous_value": 50},
            {"rank": 2, "uid": "2", "value": 50, "previous_rank": 4, "previous_value": 30},
            {"rank": 2, "uid": "3", "value": 50, "previous_rank": 3, "previous_value": 40},
            {"rank": 5, "uid": "9", "value": 0, "previous_rank": 5, "previous_value": 0}]})
        top = yield self.ok_json("POST", "/v1/leaderboard", json_body={
            "uids": [1, 2, 3], "metric": "points", "from": t, "to": t + 3600, "limit": 1})
        self.assertEqual(top, {"total": 3, "entries": [{"rank": 1, "uid": "1", "value": 50}]})

    @defer.inlineCallbacks
    def test_ten_thousand_users(self):
        rng = random.Random(3)
        t = utc(2024, 6, 1)
        values = {uid: rng.randrange(0, 300) for uid in range(1, 10001)}
        yield self.write_many([Point(uid, 0, "steps", v, t + rng.randrange(0, 30 * 86400))
                               for uid, v in values.items() if v])
        answer = yield self.ok_json("POST", "/v1/leaderboard", json_body={
            "uids": list(values), "metric": "steps", "from": t, "to": t + 30 * 86400 - 1})
        self.assertEqual(answer["total"], 10000)
        self.assertEqual([(e["rank"], int(e["uid"]), e["value"]) for e in answer["entries"]],
                         [tuple(s) for s in standings(values)])
        yield self.bad("POST", "/v1/leaderboard", json_body={
            "uids": list(range(10001)), "metric": "steps", "from": t, "to": t + 1})

    @defer.inlineCallbacks
    def test_randomized_against_the_model(self):
        rng = random.Random(7)
        base = utc(2024, 2, 20)
        uids = list(range(1, 40))
        yield self.write_many([Point(rng.choice(uids), rng.randrange(0, 3), "points", rng.randrange(0, 20),
                                     base + rng.randrange(0, 20 * 86400)) for _ in range(4000)])
        for _ in range(15):
            start = base + rng.randrange(0, 10 * 86400)
            end = start + rng.randrange(0, 10 * 86400)
            compare_to = rng.randrange(start, end + 1)
            atid = rng.randrange(0, 3)
            group = rng.sample(uids, rng.randrange(1, len(uids)))
            offsets = {uid: rng.randrange(-86400, 86400) for uid in rng.sample(group, len(group) // 2)}
            answer = yield self.ok_json("POST", "/v1/leaderboard", json_body={
                "uids": group, "metric": "points", "atid": atid, "from": start, "to": end, "compare_to": compare_to,
                "offsets": {str(uid): o for uid, o in offsets.items()}})
            now = {u: self.model.sum(u, "points", start + offsets.get(u, 0), end + offsets.get(u, 0), atid) for u in group}
            then = {u: self.model.sum(u, "points", start + offsets.get(u, 0), compare_to + offsets.get(u, 0), atid)
                    for u in group}
            previous = {s.uid: s for s in standings(then)}
            self.assertEqual(answer["entries"], [
                {"rank": s.rank, "uid": str(s.uid), "value": s.value,
                 "previous_rank": previous[s.uid].rank, "previous_value": previous[s.uid].value}
                for s in standings(now)])

    @defer.inlineCallbacks
    def test_bad_input(self):
        good = {"uids": [1, 2], "metric": "points", "from": 10, "to": 20}
        for broken in ({**good, "uids": []}, {**good, "uids": ["1"]}, {**good, "uids": [True]}, {**good, "metric": "x"},
                       {**good, "to": 5}, {**good, "compare_to": 5}, {**good, "limit": 0}, {**good, "offsets": []},
                       {**good, "compareTo": 15}, {k: v for k, v in good.items() if k != "from"}, [good]):
            yield self.bad("POST", "/v1/leaderboard", json_body=broken)
        yield self.bad("POST", "/v1/leaderboard", raw=b'{"uids": [1], "uids": [2]}')
        yield self.bad("POST", "/v1/leaderboard", raw=b"\xff")


class CountTests(QueryTestCase):
    @defer.inlineCallbacks
    def test_counts_written_and_summed(self):
        t = utc(2024, 1, 31, 23, 59, 59)
        written = yield self.ok_json("POST", "/v1/counts", json_body=[
            {"name": "signups", "value": 100, "ts": t}, {"name": "signups", "value": 5, "ts": t + 1},
            {"name": "log.ins", "value": -2, "ts": t}])
        self.assertEqual(written, {"written": 3, "duplicates": 0})
        one = yield self.ok_json("POST", "/v1/counts", json_body={"name": "signups", "value": 1, "ts": t + 86400})
        self.assertEqual(one["written"], 1)
        answer = yield self.ok_json("GET", f"/v1/count?names=signups,log.ins,never&from={t}&to={t + 86399}")
        self.assertEqual(answer, {"results": {"signups": 105, "log.ins": -2, "never": 0}})
        self.assertEqual(self.server.call("HGET", "c:signups:202402", "20240201"), b"$1\r\n6\r\n")  # 5 + the 1 a day later

    @defer.inlineCallbacks
    def test_idempotency_key(self):
        for _ in range(2):
            status, _, _ = yield self.request("POST", "/v1/counts", json_body={"name": "ab", "value": 1, "ts": 5, "id": "x"})
            self.assertEqual(status, 200)
        answer = yield self.ok_json("GET", "/v1/count?names=ab&from=0&to=10")
        self.assertEqual(answer["results"], {"ab": 1})

    @defer.inlineCallbacks
    def test_bad_input(self):
        for broken in ({"name": "a", "value": 1, "ts": 1}, {"name": "a" * 65, "value": 1, "ts": 1},
                       {"name": "a:b", "value": 1, "ts": 1}, {"name": "ab", "value": 1.0, "ts": 1},
                       {"name": "ab", "value": 1, "ts": -1}, {"name": "ab", "value": 1, "ts": 1, "uid": 1}, []):
            yield self.bad("POST", "/v1/counts", json_body=broken)
        for query in ("names=a&from=0&to=1", "names=ab&from=2&to=1", "from=0&to=1", "names=a{b}&from=0&to=1"):
            yield self.bad("GET", "/v1/count?" + query)


class SetTotalTests(QueryTestCase):
    @defer.inlineCallbacks
    def test_resending_a_total_changes_nothing_and_a_correction_adds_the_difference(self):
        t = utc(2024, 7, 1, 8)
        point = {"uid": 3, "atid": 2, "metric": "distance", "aid": 501, "total": 1000, "ts": t}
        for _ in range(3):
            yield self.ok_json("POST", "/v1/points", json_body=point)
        yield self.ok_json("POST", "/v1/points", json_body={**point, "total": 1250, "ts": t + 600})
        yield self.ok_json("POST", "/v1/points", json_body={**point, "aid": 502, "total": 40, "ts": t + 900})
        answer = yield self.ok_json("POST", "/v1/sum", json_body={"uids": [3], "metrics": ["distance"], "atid": 2,
                                                                  "from": t, "to": t + 599})
        self.assertEqual(answer["results"]["3"], {"distance": 1000})
        whole = yield self.ok_json("GET", f"/v1/sum?uids=3&metrics=distance&from={t}&to={t + 3600}")
        self.assertEqual(whole["results"]["3"], {"distance": 1290})
        yield self.bad("POST", "/v1/points", json_body={**point, "value": 5})
        yield self.bad("POST", "/v1/points", json_body={k: v for k, v in point.items() if k != "aid"})


class CompatibleRouteTests(QueryTestCase):
    """The original psd's routes: exact bytes of its answers."""

    T = utc(2016, 3, 15, 16, 56, 45)

    @defer.inlineCallbacks
    def seed(self):
        t = self.T
        yield self.write(Point(1, 3, "points", 10, t), Point(1, 3, "points", 11, t + 3), Point(1, 3, "points", 1, t + 6),
                         Point(1, 2, "steps", 500, t), Point(1, 0, "steps", 7, t + 1),
                         Point(2, 2, "steps", 40, t + 2))

    @defer.inlineCallbacks
    def test_write_is_a_set_total(self):
        body = {"thing": "points", "uid": 8, "atid": 4, "aid": 77, "value": 120, "ts1": self.T - 600, "ts2": self.T}
        for _ in range(2):
            answer = yield self.request("POST", "/v1/write", json_body=body)
            self.assertEqual(answer, (200, "text/plain; charset=utf-8", b"ok"))
        yield self.request("POST", "/v1/write", json_body={**body, "value": 150, "ts2": self.T + 60})
        status, content_type, text = yield self.request("GET", f"/v1/query/8/points/4/{self.T}/{self.T + 59}")
        self.assertEqual((status, content_type, text), (200, "text/plain; charset=utf-8", b"120"))
        _, _, text = yield self.request("GET", f"/v1/query/8/points/all/{self.T}/{self.T + 60}")
        self.assertEqual(text, b"150")

    @defer.inlineCallbacks
    def test_query_routes_exact_answers(self):
        yield self.seed()
        t = self.T
        _, _, text = yield self.request("GET", f"/v1/query/1/points/3/{t}/{t + 5}")
        self.assertEqual(text, b"21")
        answer = yield self.request("POST", f"/v1/query_ids/steps/all/{t}/{t + 5}", form={"ids": "2,1,10"})
        self.assertEqual(answer, (200, "text/plain; charset=utf-8", b'{"1":507,"10":0,"2":40}'))
        status, content_type, body = yield self.request("POST", f"/v1/mu_query/steps/all/{t}/{t + 5}", form={"ids": "1,2,3"})
        self.assertEqual((status, content_type), (200, "application/json"))
        self.assertEqual(body, b'{"atids":{"1":[0,2],"2":[2],"3":[]},"values":{"1":507,"2":40,"3":0}}')
        _, _, body = yield self.request("POST", f"/v1/mumt_query/all/{t}/{t + 5}", form={"ids": "1,2,3", "things": "steps,points"})
        self.assertEqual(body, b'{"data":{"1":{"_atids":[0,2,3],"points":21,"steps":507},'
                               b'"2":{"_atids":[2],"points":0,"steps":40},"3":{"_atids":[],"points":0,"steps":0}}}')
        _, _, body = yield self.request("POST", f"/v1/mumt_query/2/{t}/{t + 5}", form={"ids": "1,2", "things": "steps"})
        self.assertEqual(body, b'{"data":{"1":{"_atids":[2],"steps":500},"2":{"_atids":[2],"steps":40}}}')

    @defer.inlineCallbacks
    def test_v2_mumt_offsets_and_idle_users_left_out(self):
        yield self.seed()
        t = self.T
        _, _, body = yield self.request("POST", f"/v2/mumt_query/all/{t + 3600}/{t + 3605}",
                                        form={"ids": "1,2,3", "things": "steps", "offsets": "-3600,-3600,0"})
        self.assertEqual(body, b'{"data":{"1":{"_atids":[0,2],"steps":507},"2":{"_atids":[2],"steps":40}}}')
        _, _, body = yield self.request("POST", f"/v2/mumt_query/all/{t}/{t + 5}", form={"ids": "1,2", "things": "points,steps"})
        self.assertEqual(body, b'{"data":{"1":{"_atids":[0,2,3],"points":21,"steps":507}}}')

    @defer.inlineCallbacks
    def test_atids_of_types_that_cancel(self):
        """+5 on type 3 and -5 on type 4: the all-types total is 0, yet both types have a sum of their own."""
        t = self.T
        yield self.write(Point(5, 3, "points", 5, t), Point(5, 4, "points", -5, t + 1), Point(5, 4, "steps", 7, t + 2))
        _, _, body = yield self.request("POST", f"/v1/mumt_query/all/{t}/{t + 5}", form={"ids": "5", "things": "points"})
        self.assertEqual(body, b'{"data":{"5":{"_atids":[3,4],"points":0}}}')
        _, _, body = yield self.request("POST", f"/v1/mu_query/points/all/{t}/{t + 5}", form={"ids": "5"})
        self.assertEqual(body, b'{"atids":{"5":[3,4]},"values":{"5":0}}')
        # v2 drops a user only when no type contributed, or when points are asked for and are 0 (as the Go psd did)
        _, _, body = yield self.request("POST", f"/v2/mumt_query/all/{t}/{t + 5}", form={"ids": "5", "things": "steps"})
        self.assertEqual(body, b'{"data":{"5":{"_atids":[4],"steps":7}}}')
        _, _, body = yield self.request("POST", f"/v2/mumt_query/all/{t}/{t + 5}", form={"ids": "5", "things": "points,steps"})
        self.assertEqual(body, b'{"data":{}}')

    @defer.inlineCallbacks
    def test_readcount_routes(self):
        t = self.T
        yield self.ok_json("POST", "/v1/counts", json_body=[{"name": "views", "value": 4, "ts": t},
                                                           {"name": "clicks_7", "value": 2, "ts": t},
                                                           {"name": "clicks_9", "value": 3, "ts": t + 10}])
        answer = yield self.request("GET", f"/v1/readcount/views/{t}/{t}")
        self.assertEqual(answer, (200, "text/plain; charset=utf-8", b"4"))
        answer = yield self.request("POST", f"/v1/readcount_with_ids/clicks/{t}/{t + 5}", form={"ids": "9,7,8"})
        self.assertEqual(answer, (200, "text/plain; charset=utf-8", b'{"7":2,"8":0,"9":0}'))

    @defer.inlineCallbacks
    def test_ping_is_the_original_answer(self):
        answer = yield self.ok_json("GET", "/health/ping")
        self.assertEqual(answer, {"pong": "OK"})

    @defer.inlineCallbacks
    def test_bad_input(self):
        t = self.T
        for method, path, form in [
            ("GET", f"/v1/query/x/points/all/{t}/{t}", None), ("GET", f"/v1/query/1/sleep/all/{t}/{t}", None),
            ("GET", f"/v1/query/1/points/any/{t}/{t}", None), ("GET", f"/v1/query/1/points/all/{t}/{t - 1}", None),
            ("GET", f"/v1/query/1/points/all/{t}/99999999999999999999999", None),
            ("POST", f"/v1/query_ids/points/all/{t}/{t}", {}), ("POST", f"/v1/query_ids/points/all/{t}/{t}", {"ids": "1,a"}),
            ("POST", f"/v1/mu_query/points/all/{t}/{t}", {"ids": ""}),
            ("POST", f"/v1/mumt_query/all/{t}/{t}", {"ids": "1"}),
            ("POST", f"/v1/mumt_query/all/{t}/{t}", {"ids": "1", "things": "points,sleep"}),
            ("POST", f"/v2/mumt_query/all/{t}/{t}", {"ids": "1,2", "things": "points", "offsets": "1"}),
            ("POST", f"/v2/mumt_query/all/{t}/{t}", {"ids": "1", "things": "points", "offsets": "1.5"}),
            ("GET", f"/v1/readcount/x/{t}/{t}", None), ("GET", f"/v1/readcount/views/{t}/x", None),
            ("POST", f"/v1/readcount_with_ids/clicks/{t}/{t}", {"ids": "a:b"}),
        ]:
            yield self.bad(method, path, form=form)
        for body in ({"thing": "points", "uid": 1, "value": 5}, {"thing": "points", "uid": 1, "value": -1, "ts2": t},
                     {"thing": "points", "uid": "1", "value": 5, "ts2": t}):
            yield self.bad("POST", "/v1/write", json_body=body)
        yield self.bad("POST", "/v1/write", raw=b"thing=points&uid=1")


class CompatibleRoutesOnASiteThatDoesNotParseFormsTests(CompatibleRouteTests):
    """The daemon's Site does not parse POST forms: the original's form routes parse them themselves."""

    parse_forms = False


class ReadBudgetTests(QueryTestCase):
    """Every read route refuses a request dearer than ``max_reads_per_request`` with a 400 that
    states the cost and the limit, before anything is sent to Redis."""

    max_reads_per_request = 40
    T = utc(2016, 3, 15, 16, 56, 45)

    def redis_commands(self) -> int:
        stats = self.server.call("INFO", "commandstats").decode()
        return sum(int(n) for n in re.findall(r"calls=(\d+)", stats))

    @defer.inlineCallbacks
    def refused(self, method: str, path: str, **kwargs):
        before = self.redis_commands()
        message = yield self.bad(method, path, **kwargs)
        self.assertIn("allowed per request", message, path)
        self.assertIn(" 40 ", message, path)
        self.assertEqual(self.redis_commands(), before + 1, f"{path} reached Redis")  # + the INFO itself
        return message

    @defer.inlineCallbacks
    def test_every_read_route_is_capped(self):
        top = MAX_TS
        ids = {"ids": "1,2,3"}
        yield self.refused("GET", f"/v1/sum?uids=1,2,3&metrics=points&from=0&to={top}")
        yield self.refused("POST", "/v1/sum", json_body={"uids": [1], "metrics": ["points"], "from": 0, "to": top})
        yield self.refused("POST", "/v1/leaderboard", json_body={"uids": [1], "metric": "points", "from": 0,
                                                                  "to": top, "compare_to": top})
        yield self.refused("GET", f"/v1/series?uid=1&metric=points&step=day&tz=Asia/Kathmandu&from={self.T}"
                                  f"&to={self.T + 30 * 86400}")
        yield self.refused("GET", f"/v1/count?names=views,clicks&from=0&to={top}")
        yield self.refused("GET", f"/v1/query/1/points/all/0/{top}")
        yield self.refused("POST", f"/v1/query_ids/points/all/0/{top}", form=ids)
        yield self.refused("POST", f"/v1/mu_query/points/all/0/{top}", form=ids)
        yield self.refused("POST", f"/v1/mumt_query/all/0/{top}", form={**ids, "things": "points"})
        yield self.refused("POST", f"/v2/mumt_query/all/0/{top}", form={**ids, "things": "points"})
        yield self.refused("GET", f"/v1/readcount/views/0/{top}")
        yield self.refused("POST", f"/v1/readcount_with_ids/clicks/0/{top}", form=ids)

    @defer.inlineCallbacks
    def test_cost_is_exact_and_the_limit_is_inclusive(self):
        """[T, T] is one read: 40 users cost 40 and pass, 41 cost 41 and are refused."""
        t = self.T
        answer = yield self.ok_json("POST", "/v1/sum", json_body={"uids": list(range(40)), "metrics": ["points"] * 3,
                                                                  "from": t, "to": t})
        self.assertEqual(len(answer["results"]), 40)
        message = yield self.refused("POST", "/v1/sum", json_body={"uids": list(range(41)), "metrics": ["points"],
                                                                   "from": t, "to": t})
        self.assertIn("needs 41 hash reads", message)

    @defer.inlineCallbacks
    def test_atids_round_is_charged_before_it_is_sent(self):
        """6 users x 2 things + 6 type sets = 18 reads; the per-type round adds 2 x 2 per user: 42."""
        t = self.T
        yield self.write(*[Point(uid, atid, "points", 1, t) for uid in range(6) for atid in (1, 2, 3)])
        _, _, body = yield self.request("POST", f"/v1/mumt_query/all/{t}/{t}", form={"ids": "0,1,2,3,4,5",
                                                                                     "things": "points,steps"})
        self.assertIn(b"needs 42 hash reads", body)
        answer = yield self.ok_json("POST", f"/v1/mumt_query/all/{t}/{t}", form={"ids": "0,1", "things": "points,steps"})
        self.assertEqual(answer["data"]["1"], {"_atids": [1, 2, 3], "points": 3, "steps": 0})


class OpenAPITests(QueryTestCase):
    @defer.inlineCallbacks
    def test_every_route_is_described(self):
        document = yield self.ok_json("GET", "/openapi.json")
        self.assertEqual(document["openapi"][:2], "3.")
        described = {(path, method) for path, item in document["paths"].items() for method in item}
        routes = set()
        for rule in self.api.app.url_map.iter_rules():
            path = rule.rule.replace("<", "{").replace(">", "}")
            routes |= {(path, method.lower()) for method in rule.methods if method not in ("HEAD", "OPTIONS")}
        self.assertEqual(described, routes)
        for path, item in document["paths"].items():
            for operation in item.values():
                named = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
                self.assertEqual(named, {part[1:-1] for part in path.split("/") if part.startswith("{")}, path)
        self.assertEqual(document["paths"]["/v1/leaderboard"]["post"]["requestBody"]["content"]["application/json"]
                         ["schema"]["properties"]["metric"]["enum"], sorted(METRICS))

    @defer.inlineCallbacks
    def test_garbage_on_every_route_is_a_400_never_a_500(self):
        """Every described route, its path parameters filled with junk, with junk bodies and fields."""
        document = yield self.ok_json("GET", "/openapi.json")
        junk_bodies = [b"", b"\xff\xfe", b"{", b"[]", b'{"a": NaN}', b'"\\ud800"', b"1" * 5000, b"ids=&things=&offsets=x"]
        checked = 0
        for path, item in document["paths"].items():
            if "{" not in path and path in ("/health", "/health/ping", "/openapi.json"):
                continue
            concrete = re.sub(r"\{[a-z_]+\}", "%C3%A9-1", path)  # valid UTF-8: Klein itself answers non-UTF-8 paths
            for method in item:
                for body in junk_bodies:
                    suffix = "" if method == "post" else "?uid=%C3%A9&from=-1&to=x&step=week&names=a&uids=&metrics="
                    status, content_type, answer = yield self.request(method.upper(), concrete + suffix, raw=body)
                    self.assertEqual((status, content_type), (400, "application/json"), (method, concrete, body, answer))
                    self.assertTrue(json.loads(answer)["error"])
                    checked += 1
        self.assertGreater(checked, 100)
