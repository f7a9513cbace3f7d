"""Closed-loop HTTP/1.1 load for the batch workloads: N keep-alive connections, each
sending its next prepared request when the previous one was answered.

Closed loop on purpose: a batch client waits for its acknowledgement before it
sends more, so there is no coordinated omission to hide; latency is send to
last byte of the answer.  A 503 (psd shedding load) is retried after a pause
and counted, so the points acknowledged are exactly the points sent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

RETRY_PAUSE = 0.05


@dataclass
class LoadResult:
    elapsed: float
    latencies: list = field(default_factory=list)
    acked_points: int = 0
    acked_value: int = 0
    retries: int = 0
    errors: dict = field(default_factory=dict)


def request_bytes(port: int, body: bytes) -> bytes:
    return (b"POST /v1/points HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (port, len(body))) + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding") == b"chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(int(headers.get(b"content-length", 0)))
    return status


async def _connection(port: int, queue: list, result: LoadResult) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while queue:
        request, points, value = queue.pop()
        while True:
            sent = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            if status != 503:
                break
            result.retries += 1
            await asyncio.sleep(RETRY_PAUSE)
        result.latencies.append(time.perf_counter() - sent)
        if status == 200:
            result.acked_points += points
            result.acked_value += value
        else:
            result.errors[status] = result.errors.get(status, 0) + 1
    writer.close()


def run(port: int, requests: list, connections: int) -> LoadResult:
    """``requests`` are (request bytes, points, sum of values); all are sent, answers awaited."""
    queue = list(reversed(requests))
    result = LoadResult(0.0)

    async def main():
        start = time.perf_counter()
        await asyncio.gather(*(_connection(port, queue, result) for _ in range(connections)))
        result.elapsed = time.perf_counter() - start

    asyncio.run(main())
    return result
