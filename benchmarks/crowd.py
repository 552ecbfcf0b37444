"""A crowd of long-polling clients, in its own process (so its threads never share a GIL with
the thread that measures the fast pages): ``python -m benchmarks.crowd PORT CLIENTS SECONDS
LOCATION...``.

Each client thread long-polls one of the status URLs (round robin) with ``Prefer: wait=20``,
what the waiting page's script does; when the server does not hold the poll (no
``Preference-Applied: wait``: its hold budget is spent) the client sleeps the ``Retry-After``
it got, as the page falls back to reloads. Every request uses a new connection (a browser's
reload would). Stops after SECONDS; prints one JSON line: polls sent, held (answered with
``Preference-Applied: wait``, or still out when the crowd stops: held until their task ends),
answered at once (refused), errors.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time

LONG_POLL = "wait=20"
TIMEOUT = 30.0  # seconds one request may take


def main(argv: list[str]) -> int:
    port, clients, seconds, locations = int(argv[0]), int(argv[1]), float(argv[2]), argv[3:]
    counts = {"sent": 0, "held": 0, "refused": 0, "errors": 0, "ended": 0}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds
    pause = threading.Event()  # never set: an interruptible sleep

    def client(location: str) -> None:
        while time.monotonic() < stop_at:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            with lock:
                counts["sent"] += 1
            try:
                conn.request("GET", location, headers={"Prefer": LONG_POLL})
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                with lock:
                    counts["errors"] += 1
                pause.wait(1.0)
                continue
            finally:
                conn.close()
            if response.status != 202:
                with lock:
                    counts["ended"] += 1
                return
            held = "wait" in (response.getheader("Preference-Applied") or "")
            with lock:
                counts["held" if held else "refused"] += 1
            if not held:
                pause.wait(max(1, int(response.getheader("Retry-After") or 1)))

    threads = [
        threading.Thread(target=client, args=(locations[n % len(locations)],), daemon=True)
        for n in range(clients)
    ]
    for thread in threads:
        thread.start()
    pause.wait(seconds)
    with lock:
        answered = counts["held"] + counts["refused"] + counts["errors"] + counts["ended"]
        counts["held"] += counts["sent"] - answered  # still out: held by the server
        print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
