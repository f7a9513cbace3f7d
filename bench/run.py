"""psd's benchmark suite: ``make bench`` (full) or ``python bench/run.py --quick`` (smoke).

Each round measures, alternating on the same Redis, the references and psd:
the Redis ceiling (redis-benchmark HINCRBY / 10), workloads (a) and (b), the
bare Klein handler and workload (c) with one and with two psd processes.
The table quotes medians over the rounds, and ratios as medians of the
per-round ratios.  Every psd run ends by checking the Redis totals against
what was acknowledged; a mismatch fails the suite.

Pinning (2 cores): psd and the bare Klein handler run on core 0 (``taskset -c
0``); Redis, redis-benchmark and the load generators on core 1.  With
``--workers 2`` psd may use both cores, as in production.  Children inherit this
process's pinning to the load core, so every child is pinned explicitly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).parent))
import httpload  # noqa: E402
from resp import RedisProbe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PSD_CORE, LOAD_CORE = "0", "1"
ALL_CORES = f"0-{(os.cpu_count() or 1) - 1}"
BASE_TS = 1767225600  # 2026-01-01 00:00:00 UTC: 60 days stay inside one year hash
DAYS = 60
GO_PSD_SINGLE_POINT = 7183  # issue 5: the Go psd, single-point /v1/write at 32 connections
#: Commands the benchmark itself sends; not counted as psd's cost.
PROBE_COMMANDS = {"info", "eval", "slowlog", "config", "flushall", "ping", "script", "select", "client",
                  "hello", "command", "dbsize"}


GO_NSQ_WORKER = 5099  # issue 5: the Go psd's NSQ worker, one-point messages/s
WRK_CONNECTIONS = 32


@dataclass
class Sizes:
    uniform_points: int
    workout_users: int
    wrk_seconds: int
    benchmark_requests: int
    nsq_messages: dict  # points per message -> messages
    rounds: int


FULL = Sizes(uniform_points=300_000, workout_users=5000, wrk_seconds=10, benchmark_requests=2_000_000,
             nsq_messages={1: 100_000, 100: 3_000}, rounds=3)
QUICK = Sizes(uniform_points=10_000, workout_users=500, wrk_seconds=1, benchmark_requests=200_000,
              nsq_messages={1: 1_000, 100: 50}, rounds=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(core: str, argv: list) -> list:
    """``argv`` on ``core``; this process is pinned to the load core, so every child is pinned."""
    return ["taskset", "-c", core, *argv]


def wait_http(port: int, path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answered 200 on port {port}{path}")
        time.sleep(0.1)


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            todo += [int(c) for c in Path(f"/proc/{current}/task/{current}/children").read_text().split()]
        except OSError:
            pass
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes so far."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class Server:
    """A child process the suite starts, and always stops."""

    def __init__(self, argv: list, log: Path, env=None):
        self.log = log.open("ab")
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Bench:
    def __init__(self, sizes: Sizes, workdir: Path):
        self.sizes = sizes
        self.workdir = workdir
        self.redis_port = free_port()
        self.redis = Server(pinned(LOAD_CORE, [
            shutil.which("redis-server"), "--port", str(self.redis_port), "--bind", "127.0.0.1",
            "--dir", str(workdir), "--save", "", "--appendonly", "no"]), workdir / "redis.log")
        deadline = time.monotonic() + 10
        while True:
            try:
                self.probe = RedisProbe(self.redis_port)
                self.probe.call("PING")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.probe.call("CONFIG", "SET", "slowlog-log-slower-than", "1000")

    def close(self) -> None:
        self.probe.close()
        self.redis.stop()

    # references ---------------------------------------------------------------------------------------

    def redis_ceiling(self) -> float:
        """Points/s a client sending each of a point's 10 HINCRBY could reach (issue 5's formula)."""
        output = subprocess.run(pinned(LOAD_CORE, [
            "redis-benchmark", "-p", str(self.redis_port), "-P", "16", "-c", "8", "-r", "1000000",
            "-n", str(self.sizes.benchmark_requests), "-q", "--dbnum", "1",
            "hincrby", "k:__rand_int__", "f:__rand_int__", "1"]), capture_output=True, text=True, check=True).stdout
        per_second = float(re.findall(r"([\d.]+) requests per second", output)[-1])
        self.probe.call("FLUSHALL")
        return per_second / 10

    def bare_klein(self) -> dict:
        port = free_port()
        server = Server(pinned(PSD_CORE, [sys.executable, str(ROOT / "bench" / "bare_klein.py"), str(port)]),
                        self.workdir / "bare_klein.log")
        try:
            self._wait_port(port)
            return self._wrk(port, [server.process.pid])
        finally:
            server.stop()

    @staticmethod
    def _wait_port(port: int) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # psd --------------------------------------------------------------------------------------------

    def start_psd(self, workers: int) -> tuple[Server, int, list]:
        """psd with its default settings except the access log (off: the bare handler has none either)."""
        port = free_port()
        settings = self.workdir / "settings.toml"
        settings.write_text("[http]\naccess_log = false\n")
        argv = [sys.executable, "-m", "twisted", "psd", "--config", str(settings),
                "--redis", f"redis://127.0.0.1:{self.redis_port}/0", "--http", f"tcp:{port}:interface=127.0.0.1"]
        if workers > 1:
            argv += ["--workers", str(workers)]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        server = Server(pinned(PSD_CORE if workers == 1 else ALL_CORES, argv), self.workdir / "psd.log", env=env)
        wait_http(port, "/health")
        deadline = time.monotonic() + 20
        while len(process_tree(server.process.pid)) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"psd did not start {workers} workers")
            time.sleep(0.1)
        time.sleep(0.5)  # the last worker connects to Redis
        return server, port, process_tree(server.process.pid)

    def _start_measure(self) -> dict:
        self.probe.call("FLUSHALL")
        self.probe.call("SLOWLOG", "RESET")
        return self.probe.command_calls()

    def _redis_cost(self, before: dict, points: int) -> dict:
        after = self.probe.command_calls()
        calls = sum(c - before.get(name, (0, 0))[0] for name, (c, _) in after.items() if name not in PROBE_COMMANDS)
        evalsha = [after.get("evalsha", (0, 0))[i] - before.get("evalsha", (0, 0))[i] for i in (0, 1)]
        slow = [entry[2] for entry in self.probe.call("SLOWLOG", "GET", "1000") if "evalsha" in str(entry[3]).lower()]
        return {"cmds_per_point": calls / max(points, 1),
                "script_us": evalsha[1] / evalsha[0] if evalsha[0] else 0.0,
                "script_max_us": max(slow) if slow else None}

    def totals(self) -> tuple[int, int]:
        """(sum over atid 0, sum over atids 1-5) of the year hashes: each equals what was applied."""
        return (self.probe.sum_fields("hz:*:0:*:2026"), self.probe.sum_fields("hz:*:[1-9]:*:2026"))

    def batch_workload(self, port: int, pids: list, requests: list, connections: int) -> dict:
        before = self._start_measure()
        sampler = RssSampler(pids)
        cpu = cpu_seconds(pids)
        result = httpload.run(port, requests, connections)
        cpu = cpu_seconds(pids) - cpu
        rss = sampler.stop()
        points = result.acked_points
        row = {"points_s": points / result.elapsed, "p50": percentile(result.latencies, 50),
               "p99": percentile(result.latencies, 99), "rss": rss, "retries": result.retries,
               "cpu_us": cpu * 1e6 / max(points, 1), "errors": result.errors, **self._redis_cost(before, points)}
        atid0, typed = self.totals()
        row["check"] = atid0 == typed == result.acked_value and not result.errors
        row["check_text"] = f"acked {result.acked_value}, redis {atid0}/{typed}"
        return row

    def single_point_workload(self, port: int, pids: list) -> dict:
        before = self._start_measure()
        row = self._wrk(port, pids)
        time.sleep(0.5)  # the last requests wrk abandoned at its deadline may still be applied
        row.update(self._redis_cost(before, row["acked"]))
        atid0, typed = self.totals()
        # wrk stops with up to one request per connection unanswered: applied or not, never acknowledged.
        row["check"] = atid0 == typed and row["acked"] <= atid0 <= row["acked"] + WRK_CONNECTIONS
        row["check_text"] = f"acked {row['acked']}, redis {atid0}/{typed}"
        return row

    def _wrk(self, port: int, pids: list) -> dict:
        env = dict(os.environ, BENCH_BASE_TS=str(BASE_TS), BENCH_USERS="10000", BENCH_SPAN=str(DAYS * 86400))
        sampler = RssSampler(pids)
        cpu = cpu_seconds(pids)
        output = subprocess.run(pinned(LOAD_CORE, [
            "wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{self.sizes.wrk_seconds}s", "--latency",
            "-s", str(ROOT / "bench" / "single_point.lua"), f"http://127.0.0.1:{port}/v1/points"]),
            capture_output=True, text=True, env=env, check=True).stdout
        cpu = cpu_seconds(pids) - cpu
        rss = sampler.stop()
        requests = int(re.search(r"(\d+) requests in", output).group(1))
        seconds = float(re.search(r"requests in ([\d.]+)s", output).group(1))
        bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
        errors = int(bad.group(1)) if bad else 0
        socket_errors = re.search(r"Socket errors: (.*)", output)
        return {"points_s": (requests - errors) / seconds, "acked": requests - errors,
                "cpu_us": cpu * 1e6 / max(requests, 1),
                "p50": wrk_latency(output, "50%"), "p99": wrk_latency(output, "99%"), "rss": rss,
                "errors": {"non-2xx": errors, **({"socket": socket_errors.group(1)} if socket_errors else {})}
                if errors or socket_errors else {}}


def nsq_workload(points_per_message: int, messages: int) -> dict:
    """(d) bench/nsq_ingest.py: its own nsqd and Redis, psd's consumer and writer in its process."""
    output = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "nsq_ingest.py"), "--messages", str(messages),
         "--points-per-message", str(points_per_message)],
        capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
    lines = [line for line in output.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"nsq_ingest.py printed no result: {output.stderr[-2000:]}")
    result = json.loads(lines[-1])
    points = result["expected_total"]
    return {"points_s": result["points_per_s"], "messages_s": result["messages_per_s"],
            "cpu_us": result["psd_cpu_s"] * 1e6 / points, "check": result["exact"],
            "check_text": f"sent {points}, redis {result['redis_total']}"}


class RssSampler:
    """Peak RSS of a process tree, sampled every 100 ms from a thread."""

    def __init__(self, pids: list):
        self._pids = pids
        self.peak = rss_bytes(pids)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(0.1):
            self.peak = max(self.peak, rss_bytes(self._pids))

    def stop(self) -> int:
        self._stopped.set()
        self._thread.join()
        return max(self.peak, rss_bytes(self._pids))


def percentile(values: list, p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def wrk_latency(output: str, label: str) -> float:
    match = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


# workloads ----------------------------------------------------------------------------------------------

def uniform_requests(port: int, points: int, rng: random.Random) -> list:
    """(a) uniform random points: 10k users, 60 days, 5 activity types, batches of 1,000."""
    requests = []
    for start in range(0, points, 1000):
        batch = [{"uid": rng.randint(1, 10000), "atid": rng.randint(1, 5), "metric": "points",
                  "value": rng.randint(1, 100), "ts": BASE_TS + rng.randrange(DAYS * 86400)}
                 for _ in range(min(1000, points - start))]
        requests.append((httpload.request_bytes(port, orjson.dumps(batch)), len(batch), sum(p["value"] for p in batch)))
    return requests


def workout_requests(port: int, users: int, rng: random.Random) -> list:
    """(b) each user sends one workout of 20 points inside one hour, in one request."""
    requests = []
    for uid in range(1, users + 1):
        hour = BASE_TS + rng.randrange(DAYS * 24) * 3600
        atid = rng.randint(1, 5)
        workout = [{"uid": uid, "atid": atid, "metric": "steps", "value": rng.randint(1, 1000), "ts": ts}
                   for ts in sorted(hour + rng.randrange(3600) for _ in range(20))]
        requests.append((httpload.request_bytes(port, orjson.dumps(workout)), 20, sum(p["value"] for p in workout)))
    return requests


# the table ----------------------------------------------------------------------------------------------

@dataclass
class Series:
    """One row of the table: the measurements of every round."""

    name: str
    runs: list = field(default_factory=list)
    ratios: list = field(default_factory=list)
    reference: str = ""
    target: float = 0.0

    def median(self, key: str):
        values = [run[key] for run in self.runs if run.get(key) is not None]
        return statistics.median(values) if values else None


def format_table(rows: list) -> str:
    header = ("workload", "points/s", "ratio", "target", "p50 ms", "p99 ms", "CPU us/pt", "cmds/pt",
              "script us avg/max", "RSS MB", "totals")
    lines = [header]
    for row in rows:
        ratio = statistics.median(row.ratios) if row.ratios else None
        script = row.median("script_us")
        script_max = max((run["script_max_us"] for run in row.runs if run.get("script_max_us")), default=None)
        checks = [run["check"] for run in row.runs if "check" in run]
        lines.append((
            row.name,
            f"{row.median('points_s'):,.0f}",
            f"{ratio:.2f}x {row.reference}" if ratio is not None else "",
            (("ok " if ratio >= row.target else "MISSED ") + f">={row.target}x") if row.target else "",
            _ms(row.median("p50")), _ms(row.median("p99")),
            f"{row.median('cpu_us'):.0f}" if row.median("cpu_us") is not None else "",
            f"{row.median('cmds_per_point'):.2f}" if row.median("cmds_per_point") is not None else "",
            (f"{script:.0f}/" + (f"{script_max}" if script_max else "<1000")) if script else "",
            f"{row.median('rss') / 2**20:.0f}" if row.median("rss") else "",
            ("ok" if all(checks) else "FAILED") + f" ({len(checks)} runs)" if checks else "",
        ))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)) for line in lines)


def _ms(seconds) -> str:
    return "" if seconds is None else f"{seconds * 1000:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per workload (smoke test)")
    parser.add_argument("--rounds", type=int, help="rounds of alternating measurements (default 3, quick 1)")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    os.sched_setaffinity(0, {int(LOAD_CORE)})  # this process is the load generator of (a) and (b)
    if args.rounds:
        sizes.rounds = args.rounds
    if os.cpu_count() < 2:
        print("warning: fewer than 2 cores, the pinning below shares one core", file=sys.stderr)

    ceiling = Series("Redis ceiling (HINCRBY/10)")
    bare = Series("bare Klein, single point")
    uniform = Series("(a) uniform, 1000/req, 4 conn", reference="ceiling", target=1.2)
    workouts = Series("(b) workouts, 20/req, 16 conn", reference="ceiling", target=2.5)
    single = Series("(c) single point, 32 conn", reference="bare", target=0.7)
    single2 = Series("(c) single point, --workers 2", reference="Go 7,183", target=1.0)
    nsq_single = Series("(d) NSQ, 1-point messages", reference="Go 5,099 msg/s", target=5.0)
    nsq_batch = Series("(d) NSQ, 100-point messages", reference="ceiling", target=1.0)
    rng = random.Random(5)
    workdir = Path(tempfile.mkdtemp(prefix="psd-bench-"))
    bench = Bench(sizes, workdir)
    failed = False
    try:
        for round_number in range(sizes.rounds):
            print(f"round {round_number + 1}/{sizes.rounds}", file=sys.stderr)
            ceiling_now = ceiling_point(bench, ceiling)
            psd, port, pids = bench.start_psd(workers=1)
            try:
                run = bench.batch_workload(port, pids, uniform_requests(port, sizes.uniform_points, rng), 4)
                record(uniform, run, ceiling_now)
                ceiling_now = ceiling_point(bench, ceiling)
                run = bench.batch_workload(port, pids, workout_requests(port, sizes.workout_users, rng), 16)
                record(workouts, run, ceiling_now)
                bare_run = bench.bare_klein()
                record(bare, bare_run, bare_run["points_s"])
                record(single, bench.single_point_workload(port, pids), bare_run["points_s"])
            finally:
                psd.stop()
            psd, port, pids = bench.start_psd(workers=2)
            try:
                record(single2, bench.single_point_workload(port, pids), GO_PSD_SINGLE_POINT)
            finally:
                psd.stop()
            run = nsq_workload(1, sizes.nsq_messages[1])
            record(nsq_single, run, GO_NSQ_WORKER)
            nsq_single.ratios[-1] = run["messages_s"] / GO_NSQ_WORKER
            ceiling_now = ceiling_point(bench, ceiling)
            record(nsq_batch, nsq_workload(100, sizes.nsq_messages[100]), ceiling_now)
        for series in (uniform, workouts, single, single2, nsq_single, nsq_batch):
            for run in series.runs:
                if not run["check"] or run.get("errors"):
                    failed = True
                    print(f"{series.name}: {run['check_text']} errors {run.get('errors')}", file=sys.stderr)
    finally:
        bench.close()
    print(format_table([ceiling, uniform, workouts, bare, single, single2, nsq_single, nsq_batch]))
    print(f"\nrounds: {sizes.rounds}; medians; ratios are medians of per-round ratios. psd and bare Klein on core "
          f"{PSD_CORE}, Redis and load generators on core {LOAD_CORE} (taskset); --workers 2 on both cores. (a)/(b) closed "
          f"loop (4/16 connections), (c) wrk -t1 -c{WRK_CONNECTIONS} (closed loop). Go 7,183 req/s is issue 5's figure "
          f"(the Go psd is not on this machine), as is Go's NSQ 5,099 msg/s; (d) is bench/nsq_ingest.py (consumer on core 0, its nsqd and Redis on core 1, drains a "
          f"backlog of {sizes.nsq_messages[1]:,} 1-point and {sizes.nsq_messages[100]:,} 100-point messages). CPU us/pt: psd's user+system CPU per point acknowledged "
          f"(all workers), the figure that other load on the machine disturbs least. psd runs with [http] "
          f"access_log = false. logs: {workdir}")
    if failed:
        print("TOTALS CHECK FAILED", file=sys.stderr)
        return 1
    return 0


def ceiling_point(bench: Bench, series: Series) -> float:
    value = bench.redis_ceiling()
    series.runs.append({"points_s": value})
    print(f"  {series.name}: {value:,.0f}", file=sys.stderr)
    return value


def record(series: Series, run: dict, reference: float) -> None:
    series.runs.append(run)
    series.ratios.append(run["points_s"] / reference)
    shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in run.items()}
    print(f"  {series.name}: {shown}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
