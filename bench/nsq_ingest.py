"""NSQ ingest rate: 100,000 messages published to a real nsqd, consumed into a real Redis.

Starts redis-server and nsqd (.tools/bin, `make nsq`) on free ports in a temp
dir, pinned to core 1 (this process, psd's consumer, to core 0), publishes everything first over HTTP /mpub, then starts psd's consumer and
writer in this process and times until the channel's depth, in-flight and
deferred counts are 0.  Closed-loop by design: it measures how fast psd drains
a backlog.  Then the Redis totals must equal what was sent.

    PYTHONPATH=. .venv/bin/python bench/nsq_ingest.py [--messages N] [--points-per-message 1 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from treq.client import HTTPClient
from twisted.internet import defer, task
from twisted.web.client import Agent

from psd.keys import Layout
from psd.nsq.consumer import NSQConsumer
from psd.store import RedisAddress, RedisStore
from psd.tap import StartupObjectsFrozen
from psd.writer import Writer

ROOT = Path(__file__).resolve().parent.parent
#: as in bench/run.py: psd (this process: the consumer and writer) on core 0, Redis and nsqd on core 1
PSD_CORE, SERVERS_CORE = 0, 1
SERVERS_PINNED = ["taskset", "-c", str(SERVERS_CORE)] if (os.cpu_count() or 1) > 1 else []
TS = 1458061005
USERS = 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(reactor, check, what: str, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


def bodies(first: int, last: int, per_message: int) -> list:
    result = []
    for i in range(first, last):
        points = [{"uid": (i * per_message + k) % USERS, "atid": 1, "metric": "points", "value": 1, "ts": TS + k}
                  for k in range(per_message)]
        result.append(json.dumps(points[0] if per_message == 1 else points).encode())
    return result


async def run_variant(reactor, http, workdir: str, messages: int, per_message: int) -> dict:
    redis_port, tcp_port, http_port = free_port(), free_port(), free_port()
    data = tempfile.mkdtemp(dir=workdir)
    procs = [
        subprocess.Popen([*SERVERS_PINNED, "redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", data,
                          "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL),
        subprocess.Popen([*SERVERS_PINNED, str(ROOT / ".tools/bin/nsqd"), f"--data-path={data}", f"--tcp-address=127.0.0.1:{tcp_port}",
                          f"--http-address=127.0.0.1:{http_port}", "--broadcast-address=127.0.0.1",
                          f"--mem-queue-size={messages + 1}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    nsqd = f"http://127.0.0.1:{http_port}"
    try:
        async def nsqd_up():
            try:
                return (await http.get(f"{nsqd}/ping")).code == 200
            except Exception:
                return False
        await wait_for(reactor, nsqd_up, "nsqd")
        await http.post(f"{nsqd}/topic/create?topic=psd")
        await http.post(f"{nsqd}/channel/create?topic=psd&channel=psd")
        batch = max(1, 5000 // per_message)  # nsqd's --max-body-size is 5 MB
        for first in range(0, messages, batch):
            response = await http.post(f"{nsqd}/mpub?topic=psd",
                                       data=b"\n".join(bodies(first, min(first + batch, messages), per_message)))
            assert response.code == 200, await response.content()

        store = RedisStore(RedisAddress(f"redis://127.0.0.1:{redis_port}/0"))
        store.start()
        await wait_for(reactor, lambda: defer.succeed(store.connected()), "redis")
        await store.load_scripts()
        writer = Writer(reactor, store, Layout())
        consumer = NSQConsumer(reactor, writer, frozenset({"points"}), nsqd_tcp_addresses=[f"127.0.0.1:{tcp_port}"],
                               max_in_flight=min(2500, 100_000 // per_message))  # stay below the writer's queue cap

        async def drained():
            # without the per-client part: this poll runs on psd's core while it drains
            stats = json.loads(await (await http.get(
                f"{nsqd}/stats?format=json&topic=psd&channel=psd&include_clients=false&include_mem=false")).content())
            channel = stats["topics"][0]["channels"][0]
            return not (channel["depth"] or channel["in_flight_count"] or channel["deferred_count"])

        frozen = StartupObjectsFrozen(reactor)  # as in twistd psd
        frozen.startService()
        started, cpu = time.monotonic(), time.process_time()
        consumer.startService()
        await wait_for(reactor, drained, "the channel to drain")
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
        await consumer.stopService()
        await writer.whenIdle()
        frozen.stopService()
        total = 0
        for uid in range(USERS):
            total += int(await store.command("HGET", f"hz:{uid}:0:points:2016", "201603") or 0)
        await store.stop()
        expected = messages * per_message
        return {"messages": messages, "points_per_message": per_message, "seconds": round(elapsed, 2),
                "messages_per_s": round(messages / elapsed), "points_per_s": round(expected / elapsed),
                "psd_cpu_s": round(cpu, 2), "script_calls": writer.calls,
                "redis_total": total, "expected_total": expected, "exact": total == expected}
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


async def main(reactor, args) -> None:
    if not (ROOT / ".tools/bin/nsqd").exists():
        subprocess.run(["make", "-s", "-C", str(ROOT), "nsq"], check=True)
    http = HTTPClient(Agent(reactor))
    workdir = tempfile.mkdtemp(prefix="psd-nsq-bench-")
    failed = False
    try:
        for per_message in args.points_per_message:
            result = await run_variant(reactor, http, workdir, args.messages, per_message)
            print(json.dumps(result), flush=True)
            failed |= not result["exact"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        raise SystemExit("Redis totals differ from what was published")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--points-per-message", type=int, nargs="+", default=[1, 100])
    options = parser.parse_args()
    if SERVERS_PINNED:
        os.sched_setaffinity(0, {PSD_CORE})
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, options)))
