"""An HTTP service that keeps its state in kvstore: hit counters and a rate limiter.

Several worker processes (on one host or many) serve requests and share one
store; transactions keep the counts exact without any lock server. It uses the
synchronous API (`kvstore.open_sync`) from the threads of a stdlib
`ThreadingHTTPServer`.

    python examples/embedded_service.py                      # demo: 2 workers, a burst of requests
    python examples/embedded_service.py s3://bucket/prefix   # the same, state on S3
    python examples/embedded_service.py STORE --serve --port 8080   # one worker, until Ctrl-C

Set KVSTORE_ENDPOINT_URL to use an S3-compatible endpoint (MinIO, R2, LocalStack, ...).

Endpoints of a worker:

    POST /hit/NAME        count a hit          -> {"name": NAME, "count": N}
    GET  /count/NAME      read a counter       -> {"name": NAME, "count": N}
    POST /limit/CLIENT    rate limiter: LIMIT requests per WINDOW seconds per client
                          -> 200 {"allowed": true, "remaining": R} or 429 {"allowed": false}
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import kvstore

LIMIT = 5  # requests per window per client
WINDOW = 3600.0  # seconds


class Service:
    """The application logic: each operation is one serializable transaction."""

    def __init__(self, db: kvstore.SyncStore, limit: int = LIMIT, window: float = WINDOW) -> None:
        self.db = db
        self.limit = limit
        self.window = window

    def hit(self, name: str) -> int:
        """Add one to counter `name`; returns the new count."""

        def increment(tx: kvstore.SyncTransaction) -> int:
            count = int(tx.get(f"hits/{name}", 0)) + 1
            tx.put(f"hits/{name}", count)
            return count

        # transact() retries when another worker changed the counter first.
        return self.db.transact(increment)

    def count(self, name: str) -> int:
        """The current value of counter `name` (a read of the latest version)."""
        return int(self.db.get(f"hits/{name}", 0))

    def allow(self, client: str, now: float | None = None) -> tuple[bool, int]:
        """Fixed-window rate limiting: (allowed, remaining) for one request of `client`."""
        window_start = int((time.time() if now is None else now) // self.window)
        key = f"ratelimit/{client}/{window_start}"

        def take(tx: kvstore.SyncTransaction) -> tuple[bool, int]:
            used = int(tx.get(key, 0))
            if used >= self.limit:
                return False, 0  # read-only: commits without any request
            tx.put(key, used + 1)
            return True, self.limit - used - 1

        return self.db.transact(take)


def make_handler(service: Service) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to `service`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the http.server naming
            parts = self.path.strip("/").split("/")
            if len(parts) == 2 and parts[0] == "count":
                self._reply(200, {"name": parts[1], "count": service.count(parts[1])})
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            parts = self.path.strip("/").split("/")
            if len(parts) == 2 and parts[0] == "hit":
                self._reply(200, {"name": parts[1], "count": service.hit(parts[1])})
            elif len(parts) == 2 and parts[0] == "limit":
                allowed, remaining = service.allow(parts[1])
                self._reply(200 if allowed else 429, {"allowed": allowed, "remaining": remaining})
            else:
                self._reply(404, {"error": "not found"})

        def _reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it; quiet
            pass

    return Handler


def serve(url: str, port: int) -> None:
    """Run one worker until SIGTERM or Ctrl-C. Prints its address when it is ready."""
    endpoint_url = os.environ.get("KVSTORE_ENDPOINT_URL")
    # values="msgpack": counters are plain ints; every worker opens the same store.
    with kvstore.open_sync(url, values="msgpack", endpoint_url=endpoint_url) as db:
        server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(Service(db)))
        signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
        print(f"listening on http://127.0.0.1:{server.server_address[1]} (store {db.url})", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


def request(method: str, url: str) -> tuple[int, dict[str, Any]]:
    """One HTTP request; returns (status, JSON body)."""
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def start_worker(url: str) -> tuple[subprocess.Popen[str], str]:
    """Start `python embedded_service.py URL --serve --port 0`; returns it and its base URL."""
    proc = subprocess.Popen(
        [sys.executable, __file__, url, "--serve", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the worker prints its address once it serves
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"worker did not start: {line!r}")
    return proc, line.split()[2]


def demo(url: str) -> None:
    """Two workers, one store: concurrent hits and rate-limited requests, then exact counts."""
    workers = [start_worker(url) for _ in range(2)]
    bases = [base for _, base in workers]
    try:
        print(f"workers: {', '.join(bases)}")
        counter = f"demo-{os.getpid()}"
        before = request("GET", f"{bases[0]}/count/{counter}")[1]["count"]
        with ThreadPoolExecutor(max_workers=16) as pool:
            hits = list(pool.map(lambda i: request("POST", f"{bases[i % 2]}/hit/{counter}"), range(40)))
            limited = list(pool.map(lambda i: request("POST", f"{bases[i % 2]}/limit/{counter}"), range(15)))
        after = request("GET", f"{bases[1]}/count/{counter}")[1]["count"]
        print(f"40 hits through 2 workers: counter {counter} went from {before} to {after}")
        print(
            f"every hit saw a distinct count: {sorted(b['count'] for _, b in hits) == list(range(before + 1, before + 41))}"
        )
        allowed = sum(1 for status, _ in limited if status == 200)
        print(f"rate limiter: {allowed} of 15 requests allowed, {15 - allowed} refused (limit {LIMIT})")
    finally:
        for proc, _ in workers:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url", nargs="?", default="service-store", help="store URL (default ./service-store)")
    parser.add_argument("--serve", action="store_true", help="run one worker until Ctrl-C")
    parser.add_argument("--port", type=int, default=8080, help="port of --serve (0: any free port)")
    args = parser.parse_args()
    if args.serve:
        serve(args.url, args.port)
    else:
        demo(args.url)


if __name__ == "__main__":
    main()
