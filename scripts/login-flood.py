#!/usr/bin/env python3
"""Login load against a running authd (Python 3 standard library only).

burst:    N logins, C at a time (worker i from 127.0.0.<i+1>, or all from one
          address with --sources 1), each retried after its Retry-After on a
          503; then the server's peak RSS (VmHWM of --pid).
fairness: one source address floods /login at a fixed rate while a second
          logs in once a second and a third refreshes in a loop; prints the
          status codes per source and the refresh latencies.

  python3 scripts/login-flood.py --url http://127.0.0.1:8099 --pid PID burst --total 200 --concurrency 16
  python3 scripts/login-flood.py --url http://127.0.0.1:8099 fairness --seconds 20 --flood-rate 180
"""

import argparse
import collections
import http.client
import json
import queue
import threading
import time
import urllib.parse

EMAIL = "flood@example.com"
PASSWORD = "correct horse battery"


def request(base, method, path, body=None, headers=None, source=None, timeout=30):
    u = urllib.parse.urlparse(base)
    conn = http.client.HTTPConnection(
        u.hostname, u.port, timeout=timeout, source_address=(source, 0) if source else None
    )
    try:
        h = {"content-type": "application/json", **(headers or {})}
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
        r = conn.getresponse()
        data = r.read()
        return r.status, dict(r.getheaders()), data
    except (OSError, http.client.HTTPException) as e:
        return type(e).__name__, {}, b""
    finally:
        conn.close()


def login(base, source=None, transport=None):
    headers = {"x-refresh-transport": "body"} if transport == "body" else None
    return request(base, "POST", "/login", {"email": EMAIL, "password": PASSWORD}, headers, source)


def vm(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) // 1024
    return None


def burst(a):
    jobs = queue.Queue()
    for _ in range(a.total):
        jobs.put(None)
    codes = collections.Counter()
    retry_after = collections.Counter()
    lock = threading.Lock()

    def worker(source):
        while True:
            try:
                jobs.get_nowait()
            except queue.Empty:
                return
            while True:
                status, headers, _ = login(a.url, source)
                with lock:
                    codes[status] += 1
                    if status == 503:
                        retry_after[headers.get("retry-after")] += 1
                if status != 503 or a.no_retry:
                    break
                time.sleep(int(headers.get("retry-after", "1")))

    started = time.monotonic()
    threads = [
        threading.Thread(target=worker, args=(f"127.0.0.{1 + i % a.sources}",))
        for i in range(a.concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"{a.total} logins, {a.concurrency} at a time from {a.sources} address(es), "
          f"{time.monotonic() - started:.1f} s; answers: {dict(codes)}")
    if retry_after:
        print(f"  Retry-After on the 503s: {dict(retry_after)}")
    if a.pid:
        print(f"  server pid {a.pid}: VmHWM {vm(a.pid, 'VmHWM')} MiB, VmRSS {vm(a.pid, 'VmRSS')} MiB")


def fairness(a):
    stop = time.monotonic() + a.seconds
    codes = {"flood": collections.Counter(), "other": collections.Counter()}
    lock = threading.Lock()
    ticks = queue.Queue()

    def pace():
        # Open loop: one tick every 1/rate s, whatever the answers.
        n, t0 = 0, time.monotonic()
        while time.monotonic() < stop:
            ticks.put(None)
            n += 1
            time.sleep(max(0.0, t0 + n / a.flood_rate - time.monotonic()))
        for _ in range(a.flood_workers):
            ticks.put("stop")

    def flood():
        while ticks.get() is None:
            status, _, _ = login(a.url, a.flood_source)
            with lock:
                codes["flood"][status] += 1

    def other():
        latencies = []
        while time.monotonic() < stop:
            began = time.monotonic()
            status, _, _ = login(a.url, a.other_source)
            latencies.append(time.monotonic() - began)
            with lock:
                codes["other"][status] += 1
            time.sleep(max(0.0, began + 1.0 - time.monotonic()))
        return latencies

    refresh_latencies, refresh_codes = [], collections.Counter()

    def refresher():
        status, _, body = login(a.url, a.refresh_source, transport="body")
        if status != 200:
            refresh_codes[f"login {status}"] += 1
            return
        token = json.loads(body)["refresh_token"]
        while time.monotonic() < stop:
            began = time.monotonic()
            status, _, body = request(
                a.url, "POST", "/refresh", {"refresh_token": token},
                {"x-refresh-transport": "body"}, a.refresh_source,
            )
            refresh_latencies.append(time.monotonic() - began)
            refresh_codes[status] += 1
            if status == 200:
                token = json.loads(body)["refresh_token"]
            time.sleep(0.02)

    other_latencies = []
    threads = [threading.Thread(target=pace), threading.Thread(target=refresher)]
    threads += [threading.Thread(target=flood) for _ in range(a.flood_workers)]
    threads.append(threading.Thread(target=lambda: other_latencies.extend(other())))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def pct(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000 if xs else float("nan")

    ok = codes["other"][200]
    total = sum(codes["other"].values())
    print(f"flood from {a.flood_source} at {a.flood_rate}/s for {a.seconds} s: {dict(codes['flood'])}")
    print(f"other from {a.other_source}, 1/s: {dict(codes['other'])} -> {ok}/{total} ok; "
          f"latency p50 {pct(other_latencies, 0.5):.0f} ms, max {pct(other_latencies, 1.0):.0f} ms")
    print(f"refresh loop from {a.refresh_source}: {dict(refresh_codes)}; "
          f"p50 {pct(refresh_latencies, 0.5):.1f} ms, p99 {pct(refresh_latencies, 0.99):.1f} ms")
    if a.pid:
        print(f"server pid {a.pid}: VmHWM {vm(a.pid, 'VmHWM')} MiB, VmRSS {vm(a.pid, 'VmRSS')} MiB")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--pid", type=int, help="server process, for its VmHWM")
    sub = p.add_subparsers(dest="mode", required=True)
    b = sub.add_parser("burst")
    b.add_argument("--total", type=int, default=200)
    b.add_argument("--concurrency", type=int, default=16)
    b.add_argument("--sources", type=int, default=16, help="distinct client addresses")
    b.add_argument("--no-retry", action="store_true", help="count a 503 as the answer")
    f = sub.add_parser("fairness")
    f.add_argument("--seconds", type=float, default=20)
    f.add_argument("--flood-rate", type=float, default=180)
    f.add_argument("--flood-workers", type=int, default=64)
    f.add_argument("--flood-source", default="127.0.0.1")
    f.add_argument("--other-source", default="127.0.0.2")
    f.add_argument("--refresh-source", default="127.0.0.3")
    a = p.parse_args()
    # The user every login is for (409 when it already exists).
    status, _, _ = request(a.url, "POST", "/register", {"email": EMAIL, "password": PASSWORD})
    if status not in (201, 409):
        raise SystemExit(f"register: {status}")
    burst(a) if a.mode == "burst" else fairness(a)


if __name__ == "__main__":
    main()
