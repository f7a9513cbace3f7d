"""Property-based: random writes, replays, set-totals and range queries against a model.

psd runs as a real `twistd psd` process on a real redis-server; the state
machine talks plain HTTP to it, so this checks the daemon exactly as shipped.
"""

from __future__ import annotations

import os
import subprocess
from collections import defaultdict

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.trial.unittest import SynchronousTestCase

from tests.processfixture import PsdProcess, wait_until
from tests.redisfixture import free_port, redis_binary

BASE = 1458061005
SPAN = 3 * 86400
METRICS = ["points", "steps"]


points_strategy = st.lists(st.fixed_dictionaries({
    "uid": st.integers(0, 2), "atid": st.integers(0, 2), "metric": st.sampled_from(METRICS),
    "value": st.integers(-1000, 10**12), "ts": st.integers(BASE, BASE + SPAN),
}), min_size=1, max_size=12)


def expect(condition, detail=None) -> None:
    """An assertion that ``python -O`` cannot strip (the machine's checks are the test)."""
    if not condition:
        raise AssertionError(detail)


class PsdMachine(RuleBasedStateMachine):
    client: PsdProcess = None
    redis_port: int = 0

    @initialize()
    def empty_store(self):
        flush = subprocess.run(["redis-cli", "-p", str(self.redis_port), "FLUSHALL"], capture_output=True)
        expect(flush.returncode == 0)
        self.points: list[dict] = []
        self.sent: dict[str, list[dict]] = {}
        self.totals: dict = defaultdict(dict)  # (uid, aid, metric) -> {ts: total}
        self.counter = 0

    def post(self, points, key=None):
        headers = {"Idempotency-Key": key} if key else None
        status, body = self.client.call("POST", "/v1/points", points, headers)
        expect(status == 200, (status, body))
        return body

    @rule(points=points_strategy, keyed=st.booleans())
    def write(self, points, keyed):
        self.counter += 1
        key = f"k{self.counter}" if keyed else None
        body = self.post(points, key)
        expect(body == {"written": len(points), "duplicates": 0})
        self.points += points
        if key:
            self.sent[key] = points

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def replay(self, data):
        key = data.draw(st.sampled_from(sorted(self.sent)))
        body = self.post(self.sent[key], key)
        expect(body == {"written": 0, "duplicates": len(self.sent[key])})

    @rule(uid=st.integers(0, 2), aid=st.integers(0, 3), total=st.integers(0, 10**6),
          ts=st.integers(BASE, BASE + SPAN), metric=st.sampled_from(METRICS))
    def set_total(self, uid, aid, total, ts, metric):
        body = self.post({"uid": uid, "atid": 1, "metric": metric, "aid": aid, "total": total, "ts": ts})
        expect(body["written"] == 1)
        self.totals[(uid, aid, metric)][ts] = total  # a total at a kept ts replaces it

    def all_points(self) -> list[dict]:
        """The plain points, and each activity's totals applied in time order (whatever the arrival order)."""
        derived = []
        for (uid, aid, metric), totals in self.totals.items():
            previous = 0
            for ts in sorted(totals):
                derived.append({"uid": uid, "atid": 1, "metric": metric, "value": totals[ts] - previous, "ts": ts})
                previous = totals[ts]
        return self.points + derived

    @rule(start=st.integers(BASE - 10, BASE + SPAN), length=st.one_of(st.integers(0, 120), st.integers(0, SPAN)),
          atid=st.integers(0, 2), offset=st.integers(-7200, 7200))
    def query(self, start, length, atid, offset):
        end = start + length
        status, body = self.client.call("POST", "/v1/sum", {
            "uids": [0, 1, 2], "metrics": METRICS, "atid": atid, "from": start, "to": end, "offsets": {"1": offset}})
        expect(status == 200, body)
        for uid in range(3):
            shift = offset if uid == 1 else 0
            for metric in METRICS:
                expected = sum(p["value"] for p in self.all_points()
                               if p["uid"] == uid and p["metric"] == metric and (atid == 0 or p["atid"] == atid)
                               and start + shift <= p["ts"] <= end + shift)
                expect(body["results"][str(uid)][metric] == expected, (uid, metric, atid, start, end, shift))

    @invariant()
    def whole_range_matches(self):
        if not getattr(self, "points", None) and not getattr(self, "totals", None):
            return
        status, body = self.client.call("GET", f"/v1/sum?uids=0,1,2&metrics=points,steps&from=0&to={2**33 - 1}")
        for uid in range(3):
            for metric in METRICS:
                expected = sum(p["value"] for p in self.all_points() if p["uid"] == uid and p["metric"] == metric)
                expect(body["results"][str(uid)][metric] == expected)


class PropertyTests(SynchronousTestCase):
    def test_model(self):
        redis_port, http_port = free_port(), free_port()
        workdir = self.mktemp()
        os.makedirs(workdir)
        redis = subprocess.Popen([redis_binary(), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--dir", workdir], stdout=subprocess.DEVNULL)
        self.addCleanup(lambda: (redis.kill(), redis.wait()))
        wait_until(lambda: _answers(redis_port), redis, "redis-server")
        client = PsdProcess(self, workdir, http_port, "--redis", f"redis://127.0.0.1:{redis_port}/0")
        client.start()
        PsdMachine.client, PsdMachine.redis_port = client, redis_port
        test = PsdMachine.TestCase
        test.settings = settings(max_examples=30, stateful_step_count=25, deadline=None,
                                 suppress_health_check=[HealthCheck.too_slow], database=None)
        test("runTest").runTest()


def _answers(port: int) -> bool:
    return subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True).stdout.strip() == b"PONG"
