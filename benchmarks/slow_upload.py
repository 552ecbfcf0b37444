"""Slow uploads against a real gunicorn: what a client sending its body at 1 byte/s costs.

A marked route reads the whole body before it can answer 202, so a client that trickles its
body holds the server thread (gthread) or the whole worker (sync) meanwhile, as the app itself
would without the middleware. This measures, for each worker class:

* how long the trickling connection is held before the server cuts it (or it ends);
* how long a normal ``GET /hello`` takes while every thread is held by tricklers.

Usage (prints a Markdown table, quoted in docs/security.md)::

    .venv/bin/python benchmarks/slow_upload.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e")]

from servers import Gunicorn, http_request  # noqa: E402

HEAD = (
    b"POST /job HTTP/1.1\r\nHost: t\r\nCookie: session=slow\r\n"
    b"Content-Length: 1000\r\nConnection: close\r\n\r\n"
)


def trickle(port: int, seconds: float, held: list[float]) -> None:
    """Send one body byte per second for *seconds*; record how long the server kept us."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 30) as sock:
        try:
            sock.sendall(HEAD)
            for _ in range(int(seconds)):
                sock.sendall(b"x")
                time.sleep(1.0)
            sock.shutdown(socket.SHUT_WR)  # give up: a truncated body (400)
            sock.recv(65536)
        except OSError:
            pass  # cut by the server (a killed sync worker)
    held.append(time.monotonic() - start)


def measure(worker: str, seconds: float) -> dict[str, float]:
    threads = 2 if worker == "gthread" else 1
    args = ["--worker-class", worker, "--timeout", "5"]
    env = {"PYTHONPATH": str(ROOT / "tests" / "e2e")}
    with Gunicorn("hostile_app:application", workers=1, threads=threads, extra_args=args,
                  env=env) as server:  # fmt: skip
        started = time.monotonic()
        http_request(server.port, "GET", "/hello")
        idle = time.monotonic() - started
        held: list[float] = []
        tricklers = [
            threading.Thread(target=trickle, args=(server.port, seconds, held))
            for _ in range(threads)
        ]
        for t in tricklers:
            t.start()
        time.sleep(1.0)  # every thread is now reading a body
        started = time.monotonic()
        try:
            http_request(server.port, "GET", "/hello", timeout=seconds + 30)
            blocked = time.monotonic() - started
        except OSError:
            blocked = float("nan")
        for t in tricklers:
            t.join(seconds + 60)
        killed = server.log().count("WORKER TIMEOUT")
    return {"idle": idle, "blocked": blocked, "held": max(held) if held else float("nan"),
            "killed": killed}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="how long each client trickles")
    options = parser.parse_args()
    print(f"Trickling 1 byte/s for {options.seconds:.0f} s; gunicorn -w 1 --timeout 5.\n")
    print(
        "| worker class | tricklers | GET /hello idle | GET /hello while trickled "
        "| trickler held | workers killed (WORKER TIMEOUT) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for worker, threads in (("sync", 1), ("gthread", 2)):
        figures = measure(worker, options.seconds)
        print(
            f"| {worker}{' --threads 2' if threads > 1 else ''} | {threads} "
            f"| {figures['idle'] * 1000:.1f} ms | {figures['blocked']:.2f} s "
            f"| {figures['held']:.2f} s | {figures['killed']:.0f} |"
        )


if __name__ == "__main__":
    main()
