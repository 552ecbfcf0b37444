"""``wsgi-deferred tasks`` in this process: the line format, and labels that cannot break it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wsgi_deferred.cli import main
from wsgi_deferred.cli.tasks import format_age
from wsgi_deferred.stores.sqlite import SQLiteStore
from wsgi_deferred.task import TaskRecord, new_task_id


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (60, "1m00s"), (252, "4m12s"), (3600, "1h00m"),
     (11100, "3h05m"), (86400 * 2 + 7 * 3600, "2d07h"), (-5, "0s")],
)  # fmt: skip
def test_format_age(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


def test_lines_and_json_of_a_sqlite_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite://{tmp_path}/t.db"
    store = SQLiteStore(str(tmp_path / "t.db"))
    now = time.time()
    old = TaskRecord(id=new_task_id(), created=now - 252, label="POST /a\x1b[2J\nfake line",
                     lease_expires=now + 30)  # fmt: skip
    new = TaskRecord(id=new_task_id(), created=now - 100, label="GET /b", lease_expires=now + 30)
    for record in (old, new):
        store.create(record)
    store.claim(new.id, now + 30)
    store.set_progress(new.id, 0.5, "half")
    store.close()

    assert main(["tasks", "--store", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # a newline in a label never makes a line of its own
    task_id, state, age, progress, label = lines[0].split(None, 4)
    assert (task_id, state, progress, label) == (new.id, "running", "50%", "GET /b")
    assert age in ("1m40s", "1m41s", "1m42s")
    assert lines[1].split(None, 4)[:2] == [old.id, "queued"]
    assert lines[1].split(None, 4)[2:4] in (["4m12s", "-"], ["4m13s", "-"], ["4m14s", "-"])
    assert "\x1b" not in lines[1] and lines[1].endswith("POST /a\\x1b[2J\\nfake line")

    assert main(["tasks", "--store", url, "--json", "--state", "queued"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["id"] == old.id and row["label"] == old.label and row["progress"] is None
    assert 250 < row["age"] < 260


def test_store_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteStore(str(tmp_path / "e.db"))
    store.secret()  # creates the database file
    store.close()
    monkeypatch.setenv("WSGI_DEFERRED_STORE", f"sqlite://{tmp_path}/e.db")
    assert main(["tasks"]) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.delenv("WSGI_DEFERRED_STORE")
    with pytest.raises(SystemExit) as exited:
        main(["tasks"])
    assert exited.value.code == 2
    assert "give --store URL" in capsys.readouterr().err


def test_a_reader_that_stops_early_is_no_error(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "many.db"))
    for _ in range(2500):  # ~150 KB of lines: more than a pipe holds
        store.create(TaskRecord(id=new_task_id(), label="GET /x", lease_expires=time.time() + 60))
    store.close()
    command = [sys.executable, "-m", "wsgi_deferred.cli", "tasks", "--limit", "2500",
               "--store", f"sqlite://{tmp_path}/many.db"]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()  # as `| head -1` does
        errors = process.stderr.read()
        assert process.wait(30) == 0, errors
    assert first.split()[1] == b"queued"
    assert errors == b""


def test_cancel_takes_an_id_that_starts_with_a_dash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # base64url ids start with "-" one time in 32; argparse alone reads one as an option.
    store = SQLiteStore(str(tmp_path / "t.db"))
    record = TaskRecord(id="-" + new_task_id()[1:], lease_expires=time.time() + 30)
    store.create(record)
    store.close()
    assert main(["tasks", "--store", f"sqlite://{tmp_path}/t.db", "--cancel", record.id]) == 0
    assert f"task {record.id}: cancelled" in capsys.readouterr().out
