#!/usr/bin/env python3
"""Slow and idle connections against a running authd (Python 3 standard
library only): N connections trickling a header byte every 5 s and N idle
after one request, while a live client requests /health/live every 200 ms;
prints when each kind was closed and the live client's latency. Raise the
file limit first (ulimit -n 4096) for large N.

  python3 scripts/slow-clients.py --url http://127.0.0.1:8080 --connections 500
"""

import argparse
import asyncio
import time
import urllib.parse


async def trickle(host, port, out):
    # Each clock starts before connecting: never after the server's.
    started = time.monotonic()
    r, w = await asyncio.open_connection(host, port)
    w.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")

    async def writer():
        try:
            while True:
                await asyncio.sleep(5)
                w.write(b"a")
                await w.drain()
        except Exception:
            pass

    task = asyncio.create_task(writer())
    try:
        while await r.read(1024):
            pass
    except Exception:
        pass
    out.append(time.monotonic() - started)
    task.cancel()


async def idle(host, port, out):
    started = time.monotonic()
    r, w = await asyncio.open_connection(host, port)
    w.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    await w.drain()
    try:
        while await r.read(1024):
            pass
    except Exception:
        pass
    out.append(time.monotonic() - started)


async def live(host, port, latencies, stop):
    while not stop.is_set():
        started = time.monotonic()
        r, w = await asyncio.open_connection(host, port)
        w.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await w.drain()
        data = await r.read()
        if not data.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"live request failed: {data[:60]!r}")
        latencies.append(time.monotonic() - started)
        w.close()
        await asyncio.sleep(0.2)


def quantile(xs, p):
    return sorted(xs)[int(p * (len(xs) - 1))]


async def main(url, n):
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname, parts.port or 80
    trickled, idled, latencies = [], [], []
    stop = asyncio.Event()
    tasks = [asyncio.create_task(trickle(host, port, trickled)) for _ in range(n)]
    tasks += [asyncio.create_task(idle(host, port, idled)) for _ in range(n)]
    await asyncio.sleep(1)
    prober = asyncio.create_task(live(host, port, latencies, stop))
    await asyncio.gather(*tasks)
    stop.set()
    await prober
    for name, xs in (("trickling", trickled), ("idle", idled)):
        print(
            f"{name} ({len(xs)}): closed after min {min(xs):.2f} s, "
            f"median {quantile(xs, 0.5):.2f} s, max {max(xs):.2f} s"
        )
    print(
        f"live /health/live meanwhile ({len(latencies)} requests): "
        f"median {quantile(latencies, 0.5) * 1000:.1f} ms, "
        f"p99 {quantile(latencies, 0.99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--connections", type=int, default=500, help="of each kind")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.connections))
