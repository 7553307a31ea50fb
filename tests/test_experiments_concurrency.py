"""No row may be lost: concurrent threads and processes, and a writer killed mid-transaction."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from experiments_helpers import synthetic_row, two_arm_experiment
from knowgate.experiments import DecisionLog, Outcome

ROWS_PER_THREAD = 120

# A writer process: THREADS threads sharing one DecisionLog, each logging ROWS rows in batches
# of 1..7 plus an outcome per row, all starting when the parent creates the "go" file.
_WRITER = """
import sys, threading, time
from pathlib import Path
from experiments_helpers import synthetic_row, two_arm_experiment
from knowgate.experiments import DecisionLog, Outcome

db_path, tag, go = sys.argv[1], sys.argv[2], Path(sys.argv[5])
threads, rows = int(sys.argv[3]), int(sys.argv[4])
exp = two_arm_experiment()
log = DecisionLog(db_path)
log.register(exp)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)

def work(t):
    i = 0
    while i < rows:
        n = min(1 + (i + t) % 7, rows - i)
        batch = [synthetic_row(exp, f"{tag}-{t}-{j}", f"u{tag}{t}-{j % 13}")
                 for j in range(i, i + n)]
        log.record_rows(batch)
        log.record_outcomes([Outcome(r.request_id, correct=j % 2 == 0, label_source=tag)
                             for j, r in enumerate(batch)])
        i += n

pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
for th in pool: th.start()
for th in pool: th.join()
log.close()
print("done", flush=True)
"""


def _env(tests_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tests_dir) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _thread_writer(path: Path, tag: str, t: int, shared: DecisionLog | None, errors: list) -> None:
    exp = two_arm_experiment()
    try:
        log = shared or DecisionLog(path)
        log.register(exp)
        i = 0
        while i < ROWS_PER_THREAD:
            n = min(1 + (i + t) % 7, ROWS_PER_THREAD - i)
            batch = [
                synthetic_row(exp, f"{tag}-{t}-{j}", f"u{tag}{t}-{j % 13}") for j in range(i, i + n)
            ]
            log.record_rows(batch)
            log.record_outcomes(
                [Outcome(r.request_id, correct=True, label_source=tag) for r in batch]
            )
            i += n
        if shared is None:
            log.close()
    except BaseException as exc:  # surfaced in the main thread
        errors.append(exc)


def test_eight_threads_and_two_processes_write_concurrently_and_every_row_is_counted(
    tmp_path, request
) -> None:
    path = tmp_path / "log.sqlite"  # created by whichever writer gets there first
    go = tmp_path / "go"
    tests_dir = request.path.parent
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), f"p{k}", "4", str(ROWS_PER_THREAD), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(tests_dir),
        )
        for k in range(2)
    ]
    errors: list[BaseException] = []
    go_event = threading.Event()
    shared_holder: dict[str, DecisionLog] = {}

    def start(t: int) -> None:
        go_event.wait()
        # Threads 0-3 share one connection (like a router), threads 4-7 open their own.
        _thread_writer(path, "main", t, shared_holder.get("log") if t < 4 else None, errors)

    threads = [threading.Thread(target=start, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for p in procs:  # both processes have imported, opened the log and wait for "go"
        assert p.stdout.readline().strip() == "ready", p.stderr.read()[-3000:]
    shared_holder["log"] = DecisionLog(path)
    go.touch()
    go_event.set()
    for th in threads:
        th.join(timeout=300)
    outs = [p.communicate(timeout=300) for p in procs]
    shared_holder["log"].close()
    assert not errors, errors
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0 and out.strip() == "done", err[-3000:]

    writers = {"main": 8, "p0": 4, "p1": 4}
    expected = {
        f"{tag}-{t}-{j}"
        for tag, n in writers.items()
        for t in range(n)
        for j in range(ROWS_PER_THREAD)
    }
    with DecisionLog(path, create=False) as log:
        rows = log.decisions("gate-vs-rag")
        assert log.count() == len(expected) == 16 * ROWS_PER_THREAD
        assert log.outcome_count() == len(expected)
    assert {r.request_id for r in rows} == expected
    # The writers really overlapped in time: every writer's span intersects every other's.
    spans = {
        tag: (
            min(r.created_at for r in rows if r.request_id.startswith(f"{tag}-")),
            max(r.created_at for r in rows if r.request_id.startswith(f"{tag}-")),
        )
        for tag in writers
    }
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values()), spans
    assert all(r.correct is not None for r in rows)  # every outcome joined to its request
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


# Commits COMMITTED rows, then starts one more transaction and stops inside it (rows inserted,
# COMMIT not yet issued), telling the parent, which then SIGKILLs it.
_HOLDER = """
import sys, time
from experiments_helpers import synthetic_row, two_arm_experiment
from knowgate.experiments import DecisionLog

db_path, committed = sys.argv[1], int(sys.argv[2])
exp = two_arm_experiment()
log = DecisionLog(db_path)
log.register(exp)
for i in range(0, committed, 10):
    log.record_rows([synthetic_row(exp, f"c{j}", f"u{j}") for j in range(i, i + 10)])

original = DecisionLog._insert_decisions
def insert_then_hang(self, conn, values):
    original(self, conn, values)
    assert conn.in_transaction
    print("IN_TRANSACTION", flush=True)
    time.sleep(600)
DecisionLog._insert_decisions = insert_then_hang
log.record_rows([synthetic_row(exp, f"x{j}", f"u{j}") for j in range(25)])
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_writer_killed_mid_transaction_leaves_every_committed_row(tmp_path, request) -> None:
    path = tmp_path / "log.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path), "50"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(request.path.parent),
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "IN_TRANSACTION", proc.stderr.read()[-3000:]
        # While the writer holds its transaction, a reader already sees exactly the committed rows.
        with DecisionLog(path, create=False) as reader:
            assert reader.count() == 50
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    with DecisionLog(path, create=False) as log:
        ids = {d.request_id for d in log.decisions("gate-vs-rag")}
        assert ids == {f"c{j}" for j in range(50)}  # every committed row, none of the rest
        # The dead writer's lock is gone: the log takes new writes.
        log.record_rows([synthetic_row(two_arm_experiment(), "after", "u")])
        assert log.count() == 51
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


# Writes batches of 5 as fast as it can, printing the committed total after each commit.
_STREAMER = """
import sys
from experiments_helpers import synthetic_row, two_arm_experiment
from knowgate.experiments import DecisionLog

exp = two_arm_experiment()
log = DecisionLog(sys.argv[1])
log.register(exp)
i = 0
while True:
    log.record_rows([synthetic_row(exp, f"s{j}", f"u{j}") for j in range(i, i + 5)])
    i += 5
    print(i, flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")
def test_writer_killed_at_an_arbitrary_moment_loses_no_committed_batch(tmp_path, request) -> None:
    path = tmp_path / "log.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", _STREAMER, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(request.path.parent),
    )
    reported = 0
    try:
        deadline = time.monotonic() + 120
        while reported < 60 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            reported = int(line)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    assert reported >= 60
    with DecisionLog(path, create=False) as log:
        n = log.count()
        ids = {d.request_id for d in log.decisions("gate-vs-rag")}
    # Every batch reported as committed is there; batches are whole (all-or-nothing).
    assert n >= reported and n % 5 == 0
    assert ids == {f"s{j}" for j in range(n)}
