"""Run the benchmarks and write RESULTS.md. See README.md.

.venv/bin/python benchmarks/run.py                     # everything (~10 min)
.venv/bin/python benchmarks/run.py --quick             # smoke run (~1.5 min)
.venv/bin/python benchmarks/run.py --only passthrough  # some sections
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

SECTIONS = ("passthrough", "roundtrip", "bigresponse", "waiting", "tier")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few, short rounds: a smoke run")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=list(SECTIONS),
        metavar="SECTION",
        help=f"sections to run, of: {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--tmp",
        default="/var/tmp",
        help="where SQLite databases, bodies and logs go (default /var/tmp)",
    )
    parser.add_argument("--celery-pool", choices=("prefork", "threads"), default="prefork")
    parser.add_argument(
        "--fresh-connections",
        action="store_true",
        help="round trip: a new connection per request instead of keep-alive",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="RESULTS file (default RESULTS.md, or RESULTS-quick.md with --quick)",
    )
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from benchmarks import bigresponse, passthrough, report, roundtrip, tier, waiting
    from benchmarks.common import file_create_micros, load_average, machine

    # SIGTERM (e.g. a CI timeout) unwinds like Ctrl-C, so every server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    output = args.output or HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    tmp = Path(tempfile.mkdtemp(prefix="wsgi-deferred-bench-", dir=args.tmp))
    log_dir = tmp / "logs"
    log_dir.mkdir()
    # The SQLite round trip is also run with its database where tempfile puts files (where
    # store=None puts it), when that is another directory: file costs differ a lot.
    other_tmp = None
    if Path(tempfile.gettempdir()).resolve() != Path(args.tmp).resolve():
        other_tmp = Path(tempfile.mkdtemp(prefix="wsgi-deferred-bench-"))
    os.environ["WSGI_DEFERRED_TEST_LOGS"] = str(log_dir)
    info = machine()
    info["file create µs"] = file_create_micros([Path(args.tmp), Path(tempfile.gettempdir())])
    info["load average at start"] = load_average()
    command = "python benchmarks/run.py " + shlex.join(argv) if argv else "python benchmarks/run.py"
    run_info = {
        "command": command.strip(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": info,
    }
    print(f"# {run_info['command']}  ({run_info['date']}, temp dir {tmp})", flush=True)
    sections = []
    try:
        for name in args.only:
            began = time.monotonic()
            print(f"== {name}", flush=True)
            if name == "passthrough":
                section = passthrough.run(args.quick, log_dir)
            elif name == "roundtrip":
                section = roundtrip.run(
                    args.quick, log_dir, tmp, args.celery_pool, other_tmp, args.fresh_connections
                )
            elif name == "waiting":
                section = waiting.run(args.quick, log_dir, tmp, args.celery_pool)
            elif name == "tier":
                section = tier.run(args.quick, log_dir, tmp)
            else:
                section = bigresponse.run(args.quick, log_dir, tmp)
            section.seconds = time.monotonic() - began
            sections.append(section)
            for target in section.targets:
                print(f"   {target.name}: {target.figure} (target {target.target}) "
                      f"{target.verdict}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if other_tmp is not None:
            shutil.rmtree(other_tmp, ignore_errors=True)
        if sections:
            info["load average at end"] = load_average()
            report.save(output.with_suffix(".json"), output, sections, run_info)
            print(f"wrote {output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
