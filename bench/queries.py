"""Query benchmark (not a test): psd under wrk, psd on one core, Redis and wrk on the other.

    PYTHONPATH=. .venv/bin/python bench/queries.py [--duration 10] [--users 10000]

Starts a redis-server and ``twistd -n psd`` on free ports, writes 30+ days of
points for ``--users`` users through HTTP, then measures with wrk:

- a 30-day single-user sum (``GET /v1/query/...``, the original psd's route),
- ``POST /v1/mumt_query`` for 50 users x 2 metrics over 30 days,
- ``POST /v1/leaderboard`` of 1,000 and of 10,000 users over 30 days,
- ``GET /health/ping``: no Redis at all, the floor that Klein and twisted.web set.

For each it reports p50/p99 at few connections, requests/s at many, psd's and
Redis' CPU per request, and the hash reads per request (HGETALL/HGET/HVALS inside
the read script, SMEMBERS inside lua/members.lua), counted by Redis itself (INFO
commandstats), then prints it all as one table.  The load average is printed
before each shape: the machine may be shared, so CPU per request is the figure
to compare between runs.  wrk is closed-loop: a connection sends its next
request when the previous answer arrived.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).parent))
from run import free_port, wait_http  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
END = 1719754031  # 2024-06-30 13:27:11 UTC: a window with ragged edges, as real "last 30 days" are
START = END - 30 * 86400 + 1
PSD_CORE, OTHER_CORE = "0", "1"


class Shape(NamedTuple):
    name: str
    method: str
    path: str
    body: bytes
    content_type: str
    latency_connections: int
    throughput_connections: int
    target: str


def post(url: str, body: bytes, content_type: str = "application/json") -> bytes:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        return answer.read()


def seed(base: str, users: int, rng: random.Random) -> int:
    """Two points a day over 35 days per user (steps too for the first 50), atids 1 and 2."""
    batch, written = [], 0
    days = range(-3, 32)
    for uid in range(1, users + 1):
        for day in days:
            for _ in range(2):
                ts = START + day * 86400 + rng.randrange(86400)
                batch.append({"uid": uid, "atid": rng.randrange(1, 3), "metric": "points", "value": rng.randrange(1, 50), "ts": ts})
                if uid <= 50:
                    batch.append({"uid": uid, "atid": 1, "metric": "steps", "value": rng.randrange(100, 3000), "ts": ts})
        if len(batch) >= 9000 or uid == users:
            post(base + "/v1/points", json.dumps(batch).encode())
            written, batch = written + len(batch), []
    return written


def shapes(users: int) -> list[Shape]:
    form = "application/x-www-form-urlencoded"
    board = lambda n: json.dumps({"uids": list(range(1, n + 1)), "metric": "points", "from": START, "to": END}).encode()
    found = [
        Shape("ping, no Redis (/health/ping)", "GET", "/health/ping", b"", "", 4, 32, "the Klein floor"),
        Shape("sum, 1 user, 30 days (/v1/query)", "GET", f"/v1/query/42/points/all/{START}/{END}", b"", "", 4, 32,
              "<= 2 ms p50; Go psd 2,662 req/s, p50 1.4 ms"),
        Shape("mumt_query, 50 users x 2 metrics", "POST", f"/v1/mumt_query/all/{START}/{END}",
              ("ids=" + ",".join(map(str, range(1, 51))) + "&things=points,steps").encode(), form, 4, 32,
              "Go psd 497 req/s, p50 6.8 ms"),
        Shape("leaderboard, 1,000 users", "POST", "/v1/leaderboard", board(1000), "application/json", 1, 4, "<= 50 ms p50"),
    ]
    if users >= 10000:
        found.append(Shape("leaderboard, 10,000 users", "POST", "/v1/leaderboard", board(10000), "application/json", 1, 2,
                           "<= 500 ms p50"))
    return found


def wrk_script(shape: Shape, directory: str) -> str:
    body_path = os.path.join(directory, "body")
    Path(body_path).write_bytes(shape.body)
    script = os.path.join(directory, "shape.lua")
    Path(script).write_text(
        f'wrk.method = "{shape.method}"\n'
        + (f'wrk.headers["Content-Type"] = "{shape.content_type}"\n' if shape.content_type else "")
        + (f'local f = io.open("{body_path}", "rb")\nwrk.body = f:read("*a")\nf:close()\n' if shape.body else ""))
    return script


class WrkRun(NamedTuple):
    requests: int
    per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def run_wrk(url: str, script: str, connections: int, duration: int) -> WrkRun:
    command = ["taskset", "-c", OTHER_CORE, shutil.which("wrk") or "wrk", "-t1", f"-c{connections}", f"-d{duration}s",
               "--latency", "--timeout", "10s", "-s", script, url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Socket errors" in output:
        raise RuntimeError(f"wrk saw socket errors:\n{output}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)\s*$", output, re.M))
    if len(percentiles) != 2:
        raise RuntimeError(f"no latency distribution in wrk's output:\n{output}")
    return WrkRun(int(re.search(r"(\d+) requests in", output).group(1)),
                  float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
                  to_ms(percentiles["50"]), to_ms(percentiles["99"]), int(errors.group(1)) if errors else 0)


def to_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def redis_cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, check=True).stdout


def hash_reads(port: int) -> dict[str, int]:
    stats = redis_cli(port, "INFO", "commandstats")
    return {name: int(calls) for name, calls in re.findall(r"cmdstat_(\w+):calls=(\d+)", stats)
            if name in ("hgetall", "hget", "hvals", "smembers", "evalsha")}


def redis_cpu_seconds(port: int) -> float:
    stats = dict(re.findall(r"^(used_cpu_(?:user|sys)):([\d.]+)", redis_cli(port, "INFO", "cpu"), re.M))
    return float(stats["used_cpu_user"]) + float(stats["used_cpu_sys"])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def print_table(results: list[dict]) -> None:
    print("\n| shape | p50 / p99 ms (conn) | req/s (conn) | psd CPU ms/req | Redis CPU ms/req "
          "| hash reads/req (HGETALL) + SMEMBERS | script calls/req | target |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['shape']} | {r['p50_ms']:g} / {r['p99_ms']:g} ({r['latency_connections']}) "
              f"| {r['req_per_s']:,.1f} ({r['throughput_connections']}) | {r['psd_cpu_ms_per_request']:g} "
              f"| {r['redis_cpu_ms_per_request']:g} | {r['hash_reads_per_request']:g} ({r['hgetall_per_request']:g}) "
              f"+ {r['smembers_per_request']:g} | {r['script_calls_per_request']:g} | {r['target']} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--json", help="also write the figures to this file")
    options = parser.parse_args()

    work = tempfile.mkdtemp(prefix="psd-bench-")
    redis_port, http_port = free_port(), free_port()
    processes = []
    try:
        processes.append(subprocess.Popen(
            ["taskset", "-c", OTHER_CORE, "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", work], stdout=subprocess.DEVNULL))
        settings = os.path.join(work, "settings.toml")
        Path(settings).write_text("[http]\naccess_log = false\n")
        psd = subprocess.Popen(
            ["taskset", "-c", PSD_CORE, os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=",
             "-l", os.path.join(work, "psd.log"), "psd", "--config", settings,
             "--redis", f"redis://127.0.0.1:{redis_port}/0",
             "--http", f"tcp:{http_port}:interface=127.0.0.1"],
            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=work)
        processes.append(psd)
        base = f"http://127.0.0.1:{http_port}"
        wait_http(http_port, "/health")
        started = time.monotonic()
        points = seed(base, options.users, random.Random(1))
        print(f"load average before measuring: {Path('/proc/loadavg').read_text().split()[:3]}", flush=True)
        print(f"seeded {points} points for {options.users} users in {time.monotonic() - started:.1f} s", flush=True)

        results = []
        for shape in shapes(options.users):
            print(f"load average before {shape.name}: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}",
                  flush=True)
            script = wrk_script(shape, work)
            url = base + shape.path
            redis_cli(redis_port, "CONFIG", "RESETSTAT")
            cpu_before, redis_before = cpu_seconds(psd.pid), redis_cpu_seconds(redis_port)
            latency = run_wrk(url, script, shape.latency_connections, options.duration)
            psd_cpu_s, redis_cpu_s = cpu_seconds(psd.pid) - cpu_before, redis_cpu_seconds(redis_port) - redis_before
            psd_cpu = psd_cpu_s / options.duration
            reads = hash_reads(redis_port)
            throughput = run_wrk(url, script, shape.throughput_connections, options.duration)
            per_request = {name: calls / latency.requests for name, calls in reads.items()}
            results.append({"shape": shape.name, "p50_ms": latency.p50_ms, "p99_ms": latency.p99_ms,
                            "latency_connections": shape.latency_connections,
                            "req_per_s": throughput.per_second, "throughput_connections": shape.throughput_connections,
                            "req_per_s_at_latency_connections": latency.per_second,
                            "non_2xx": latency.errors + throughput.errors, "psd_cpu": round(psd_cpu, 2),
                            "psd_cpu_ms_per_request": round(1000 * psd_cpu_s / latency.requests, 3),
                            "redis_cpu_ms_per_request": round(1000 * redis_cpu_s / latency.requests, 3),
                            "hash_reads_per_request": round(sum(per_request.get(c, 0) for c in ("hgetall", "hget", "hvals")), 1),
                            "hgetall_per_request": round(per_request.get("hgetall", 0), 1),
                            "smembers_per_request": round(per_request.get("smembers", 0), 1),
                            "script_calls_per_request": round(per_request.get("evalsha", 0), 1),
                            "target": shape.target})
            r = results[-1]
            print(f"{shape.name:38} p50 {r['p50_ms']:8.2f} ms  p99 {r['p99_ms']:8.2f} ms  (c={shape.latency_connections}, "
                  f"psd cpu {psd_cpu:.0%}, {r['psd_cpu_ms_per_request']:g} ms/req, redis {r['redis_cpu_ms_per_request']:g} ms/req)  "
                  f"{r['req_per_s']:8.1f} req/s (c={shape.throughput_connections})  "
                  f"reads/req {r['hash_reads_per_request']:g} + smembers {r['smembers_per_request']:g} "
                  f"in {r['script_calls_per_request']:g} script calls   non-2xx {r['non_2xx']}   target: {shape.target}", flush=True)
        print_table(results)
        if options.json:
            Path(options.json).write_text(json.dumps(results, indent=2))
        failed = [r["shape"] for r in results if r["non_2xx"]]
        if failed:  # an error answer is cheap: its figures would mean nothing
            print(f"NOT VALID: non-2xx answers on {', '.join(failed)}", file=sys.stderr)
            return 1
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
