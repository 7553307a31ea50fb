"""The decision log: every experiment request and its later outcome, in SQLite (WAL mode).

Why SQLite in WAL mode: one file, no server, readers never block the writer, and a commit is
atomic and durable - a process killed mid-transaction leaves the database with every committed
row and none of the uncommitted ones. Many threads (one connection, serialised by a lock) and
many processes (each its own connection; SQLite's locks plus a busy timeout) can write the same
file at once. ``synchronous=FULL`` (the default) makes every commit survive a power loss too, at
one fsync per transaction (a batch from ``route_batch`` is one transaction).

Tables (schema version 1)::

    meta         key, value                      format marker and schema version
    experiments  name, config_hash, definition, created_at
    decisions    request_id, created_at, experiment, arm, unit_id, unit_id_source, bucket,
                 policy_id, config_hash, model, features (JSON), p_known, threshold,
                 retrieve, retrieved, lm_calls, retriever_calls, calls (JSON),
                 timings_ms (JSON), latency_ms, query, answer, retrieval_error
    outcomes     id, request_id -> decisions, created_at, correct, score, label_source

A request may get several outcomes (e.g. a thumbs-up now, a graded label later); reports use the
latest one per request, optionally from one label source.
"""

from __future__ import annotations

import json
import math
import numbers
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from knowgate.errors import ExperimentError

if TYPE_CHECKING:
    from knowgate.experiments.assignment import Assignment
    from knowgate.experiments.experiment import Experiment
    from knowgate.routing import RoutedAnswer

LOG_FORMAT = "knowgate-decision-log"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE experiments (
    name TEXT PRIMARY KEY,
    config_hash TEXT NOT NULL,
    definition TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE decisions (
    request_id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    experiment TEXT NOT NULL REFERENCES experiments(name),
    arm TEXT NOT NULL,
    unit_id TEXT NOT NULL,
    unit_id_source TEXT NOT NULL CHECK (unit_id_source IN ('given', 'random')),
    bucket INTEGER NOT NULL,
    policy_id TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    model TEXT,
    features TEXT NOT NULL,
    p_known REAL,
    threshold REAL,
    retrieve INTEGER NOT NULL,
    retrieved INTEGER NOT NULL,
    lm_calls INTEGER NOT NULL,
    retriever_calls INTEGER NOT NULL,
    calls TEXT NOT NULL,
    timings_ms TEXT NOT NULL,
    latency_ms REAL NOT NULL,
    query TEXT,
    answer TEXT,
    retrieval_error TEXT
);
CREATE INDEX decisions_by_experiment ON decisions (experiment, arm);
CREATE TABLE outcomes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES decisions(request_id),
    created_at TEXT NOT NULL,
    correct INTEGER,
    score REAL,
    label_source TEXT NOT NULL,
    CHECK (correct IS NOT NULL OR score IS NOT NULL)
);
CREATE INDEX outcomes_by_request ON outcomes (request_id);
"""

_DECISION_COLUMNS = (
    "request_id",
    "created_at",
    "experiment",
    "arm",
    "unit_id",
    "unit_id_source",
    "bucket",
    "policy_id",
    "config_hash",
    "model",
    "features",
    "p_known",
    "threshold",
    "retrieve",
    "retrieved",
    "lm_calls",
    "retriever_calls",
    "calls",
    "timings_ms",
    "latency_ms",
    "query",
    "answer",
    "retrieval_error",
)
_INSERT_DECISION = (
    f"INSERT INTO decisions ({', '.join(_DECISION_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _DECISION_COLUMNS)})"
)


def utc_now() -> str:
    """ISO-8601 UTC timestamp with microseconds (sorts as text)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json(data: Mapping[str, Any]) -> str:
    """Strict JSON of a flat mapping; non-finite numbers become null (JSON has no NaN)."""
    clean = {str(k): (_finite_or_none(v) if isinstance(v, float) else v) for k, v in data.items()}
    return json.dumps(clean, sort_keys=True, allow_nan=False)


@dataclass(frozen=True)
class DecisionRow:
    """One logged request (see the module docstring for the columns).

    Build it from a routed answer with :meth:`from_routed`; tests and importers may build it
    directly.
    """

    request_id: str
    experiment: str
    arm: str
    unit_id: str
    unit_id_source: str
    bucket: int
    policy_id: str
    config_hash: str
    retrieve: bool
    retrieved: bool
    lm_calls: int
    retriever_calls: int
    latency_ms: float
    features: Mapping[str, float] = field(default_factory=dict)
    p_known: float | None = None
    threshold: float | None = None
    calls: Mapping[str, int] = field(default_factory=dict)
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    query: str | None = None
    answer: str | None = None
    model: str | None = None
    retrieval_error: str | None = None
    created_at: str = field(default_factory=utc_now)

    @classmethod
    def from_routed(cls, routed: RoutedAnswer, assignment: Assignment) -> DecisionRow:
        """The row of a request routed under ``assignment`` (its unit's arm).

        Raises:
            ExperimentError: the request was not decided by the arm's policy.
        """
        d = routed.decision
        if d.policy != assignment.policy_id:
            raise ExperimentError(
                f"request {routed.request_id} was decided by policy {d.policy}, not by the "
                f"policy {assignment.policy_id} of arm {assignment.arm!r} of experiment "
                f"{assignment.experiment!r}; only traffic routed under its arm is logged"
            )
        return cls(
            request_id=routed.request_id,
            experiment=assignment.experiment,
            arm=assignment.arm,
            unit_id=assignment.unit_id,
            unit_id_source=assignment.unit_id_source,
            bucket=assignment.bucket,
            policy_id=d.policy,
            config_hash=assignment.config_hash,
            retrieve=d.retrieve,
            retrieved=routed.retrieved,
            lm_calls=int(routed.calls.get("lm", 0)),
            retriever_calls=int(routed.calls.get("retriever", 0)),
            latency_ms=float(routed.timings_ms.get("total", 0.0)),
            features=dict(routed.features),
            p_known=d.p_known,
            threshold=d.threshold,
            calls=dict(routed.calls),
            timings_ms=dict(routed.timings_ms),
            query=routed.query,
            answer=routed.answer,
            model=routed.model,
            retrieval_error=routed.retrieval_error,
        )

    def values(self, store_text: bool) -> tuple[Any, ...]:
        """The row's column values, in table order."""
        latency = _finite_or_none(self.latency_ms)
        if latency is None or latency < 0:
            raise ExperimentError(
                f"request {self.request_id}: latency_ms must be a finite number >= 0, "
                f"got {self.latency_ms!r}"
            )
        return (
            self.request_id,
            self.created_at,
            self.experiment,
            self.arm,
            self.unit_id,
            self.unit_id_source,
            int(self.bucket),
            self.policy_id,
            self.config_hash,
            self.model,
            _json(self.features),
            _finite_or_none(self.p_known),
            _finite_or_none(self.threshold),
            int(bool(self.retrieve)),
            int(bool(self.retrieved)),
            int(self.lm_calls),
            int(self.retriever_calls),
            _json(self.calls),
            _json(self.timings_ms),
            latency,
            self.query if store_text else None,
            self.answer if store_text else None,
            self.retrieval_error,
        )


@dataclass(frozen=True)
class Outcome:
    """Feedback on one logged request.

    Attributes:
        request_id: the logged request.
        correct: whether the answer was right (``None`` when only a score is known).
        score: a graded score (e.g. token F1, a 1-5 rating); ``None`` when only ``correct``.
        label_source: who labelled it (``user``, ``gold``, ``judge``, ...).
    """

    request_id: str
    correct: bool | None = None
    score: float | None = None
    label_source: str = "feedback"

    def values(self) -> tuple[Any, ...]:
        """Validated column values ``(request_id, created_at, correct, score, label_source)``."""
        if not isinstance(self.request_id, str) or not self.request_id:
            raise ExperimentError("outcome request_id must be a non-empty string")
        if self.correct is not None and not isinstance(self.correct, bool):
            raise ExperimentError(
                f"outcome for {self.request_id}: correct must be true/false, got {self.correct!r}"
            )
        score = None
        if self.score is not None:
            score = _finite_or_none(self.score)
            if score is None:
                raise ExperimentError(
                    f"outcome for {self.request_id}: score must be a finite number, "
                    f"got {self.score!r}"
                )
        if self.correct is None and score is None:
            raise ExperimentError(f"outcome for {self.request_id}: give correct and/or score")
        if not isinstance(self.label_source, str) or not self.label_source.strip():
            raise ExperimentError(
                f"outcome for {self.request_id}: label_source must be a non-empty string"
            )
        correct = None if self.correct is None else int(self.correct)
        return (self.request_id, utc_now(), correct, score, self.label_source)


class LoggedDecision(NamedTuple):
    """A logged request with its latest outcome, as reports read it (a tuple: logs are long)."""

    request_id: str
    arm: str
    unit_id: str
    unit_id_source: str
    policy_id: str
    retrieve: bool
    retrieved: bool
    lm_calls: int
    retriever_calls: int
    latency_ms: float
    correct: bool | None
    score: float | None
    label_source: str | None
    created_at: str


class DecisionLog:
    """A SQLite decision log shared by threads and processes.

    Args:
        path: the database file (created with its directory unless ``create`` is False).
        create: create a missing file; False raises instead (for readers such as reports).
        store_text: store query and answer text; False keeps only decisions and numbers.
        timeout_s: how long a writer waits for another process's transaction.
        synchronous: ``FULL`` (default) fsyncs every commit, so it survives a power loss;
            ``NORMAL`` survives a killed process but may lose the last commits on power loss,
            for a cheaper commit (see benchmarks/results/ab.md).

    Raises:
        ExperimentError: the file is missing (``create=False``), not SQLite, not a knowgate
            decision log, or of an unsupported schema version.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        create: bool = True,
        store_text: bool = True,
        timeout_s: float = 60.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        """Open (and if needed create) the log; WAL mode is switched on and checked."""
        self.path = Path(path)
        self.store_text = store_text
        if synchronous not in ("FULL", "NORMAL"):
            raise ExperimentError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        if not create and not self.path.is_file():
            raise ExperimentError(f"decision log not found: {self.path}")
        if self.path.exists() and not self.path.is_file():
            raise ExperimentError(f"decision log path is not a file: {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            self._conn = conn
            conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ExperimentError(
                    f"{self.path}: SQLite refused WAL mode (journal_mode is {mode}); is the "
                    "file on a network filesystem?"
                )
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise ExperimentError(f"{self.path}: not a usable decision log ({exc})") from exc
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the connection (the log can no longer be used)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<DecisionLog {self.path}>"

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ExperimentError(f"decision log {self.path} is closed")
        return self._conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; any error rolls everything back.

        ``BEGIN IMMEDIATE`` takes the write lock up front, so two writers never deadlock while
        upgrading read locks.
        """
        with self._lock:
            conn = self._db
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _init_schema(self) -> None:
        """Check an existing log (a read: never waits for writers), or create the tables."""
        if self._check_schema(self._db):
            return
        with self._transaction() as conn:
            if self._check_schema(conn):  # another process created it meanwhile
                return
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [("format", LOG_FORMAT), ("schema_version", str(SCHEMA_VERSION))],
            )

    def _check_schema(self, conn: sqlite3.Connection) -> bool:
        """True for a valid log, False for an empty database; raises for anything else."""
        tables = {
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not r[0].startswith("sqlite_")
        }
        if not tables:
            return False
        meta = (
            dict(conn.execute("SELECT key, value FROM meta").fetchall()) if "meta" in tables else {}
        )
        if meta.get("format") != LOG_FORMAT:
            raise ExperimentError(
                f"{self.path}: a SQLite database, but not a knowgate decision log "
                f"(tables: {', '.join(sorted(tables))})"
            )
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise ExperimentError(
                f"{self.path}: decision log schema version {meta.get('schema_version')}; "
                f"this knowgate reads version {SCHEMA_VERSION}"
            )
        return True

    # --------------------------------------------------------------------------- writing
    def register(self, experiment: Experiment) -> None:
        """Record an experiment's definition, or check it matches the recorded one.

        A definition may change while the experiment has no logged traffic; after that it is
        immutable, because mixing two definitions under one name makes the report meaningless.

        Raises:
            ExperimentError: the experiment has traffic under a different definition.
        """
        definition = json.dumps(experiment.definition(), sort_keys=True, allow_nan=False)
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT config_hash, definition FROM experiments WHERE name = ?",
                (experiment.name,),
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO experiments (name, config_hash, definition, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (experiment.name, experiment.config_hash, definition, utc_now()),
                )
                return
            if row[0] == experiment.config_hash:
                return
            (traffic,) = conn.execute(
                "SELECT COUNT(*) FROM decisions WHERE experiment = ?", (experiment.name,)
            ).fetchone()
            if traffic:
                changes = describe_changes(json.loads(row[1]), experiment.definition())
                raise ExperimentError(
                    f"experiment {experiment.name!r} already has {traffic} logged decisions "
                    f"under definition {row[0]}; this definition ({experiment.config_hash}) "
                    f"differs: {changes}. An experiment cannot change once it has traffic - "
                    "give the new definition a new name (and a new salt to reshuffle units)."
                )
            conn.execute(
                "UPDATE experiments SET config_hash = ?, definition = ?, created_at = ? "
                "WHERE name = ?",
                (experiment.config_hash, definition, utc_now(), experiment.name),
            )

    def record(self, routed: Sequence[RoutedAnswer], assignments: Sequence[Assignment]) -> int:
        """Log routed requests, each with its assignment, in one transaction; returns the count.

        Raises:
            ExperimentError: the lengths differ, or a row cannot be logged (see
                :meth:`record_rows`).
        """
        if len(routed) != len(assignments):
            raise ExperimentError(f"{len(routed)} routed requests but {len(assignments)} arms")
        rows = [DecisionRow.from_routed(r, a) for r, a in zip(routed, assignments, strict=True)]
        return self.record_rows(rows)

    def record_rows(self, rows: Sequence[DecisionRow]) -> int:
        """Log decision rows in one transaction (all or none).

        Raises:
            ExperimentError: an experiment is not registered, a row's config hash is not the
                registered definition's, a request id repeats, or a value is invalid.
        """
        if not rows:
            return 0
        values = [r.values(self.store_text) for r in rows]
        with self._transaction() as conn:
            registered: dict[str, str | None] = {}
            for r in rows:
                if r.experiment not in registered:
                    found = conn.execute(
                        "SELECT config_hash FROM experiments WHERE name = ?", (r.experiment,)
                    ).fetchone()
                    registered[r.experiment] = found[0] if found else None
                expected = registered[r.experiment]
                if expected is None:
                    raise ExperimentError(
                        f"experiment {r.experiment!r} is not registered in {self.path} "
                        "(DecisionLog.register(experiment) first)"
                    )
                if r.config_hash != expected:
                    raise ExperimentError(
                        f"request {r.request_id}: experiment {r.experiment!r} is registered "
                        f"with definition {expected}, but this request was assigned under "
                        f"{r.config_hash}; another process changed the experiment"
                    )
            try:
                self._insert_decisions(conn, values)
            except sqlite3.IntegrityError as exc:
                raise ExperimentError(f"cannot log decisions: {exc}") from exc
        return len(values)

    def _insert_decisions(self, conn: sqlite3.Connection, values: list[tuple[Any, ...]]) -> None:
        conn.executemany(_INSERT_DECISION, values)

    def record_outcome(
        self,
        request_id: str,
        *,
        correct: bool | None = None,
        score: float | None = None,
        label_source: str = "feedback",
    ) -> None:
        """Record feedback on one logged request (see :class:`Outcome`)."""
        self.record_outcomes([Outcome(request_id, correct, score, label_source)])

    def record_outcomes(self, outcomes: Iterable[Outcome]) -> int:
        """Record many outcomes in one transaction; every request id must be logged.

        Raises:
            ExperimentError: an unknown request id or an invalid outcome (nothing is written).
        """
        values = [o.values() for o in outcomes]
        if not values:
            return 0
        with self._transaction() as conn:
            unknown = [
                v[0]
                for v in values
                if conn.execute("SELECT 1 FROM decisions WHERE request_id = ?", (v[0],)).fetchone()
                is None
            ]
            if unknown:
                shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise ExperimentError(
                    f"{len(unknown)} outcome(s) name requests not in {self.path}: {shown}"
                )
            conn.executemany(
                "INSERT INTO outcomes (request_id, created_at, correct, score, label_source) "
                "VALUES (?, ?, ?, ?, ?)",
                values,
            )
        return len(values)

    # --------------------------------------------------------------------------- reading
    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, tuple(params)).fetchall()

    def experiments(self) -> list[dict[str, Any]]:
        """Every registered experiment: name, config hash, definition, decision count."""
        rows = self._read(
            "SELECT e.name, e.config_hash, e.definition, e.created_at, "
            "(SELECT COUNT(*) FROM decisions d WHERE d.experiment = e.name) "
            "FROM experiments e ORDER BY e.created_at"
        )
        return [
            {
                "name": name,
                "config_hash": config_hash,
                "definition": json.loads(definition),
                "created_at": created,
                "decisions": count,
            }
            for name, config_hash, definition, created, count in rows
        ]

    def definition(self, experiment: str) -> dict[str, Any]:
        """The stored definition of ``experiment``.

        Raises:
            ExperimentError: no such experiment (the message lists the known ones).
        """
        rows = self._read("SELECT definition FROM experiments WHERE name = ?", (experiment,))
        if not rows:
            known = [e[0] for e in self._read("SELECT name FROM experiments ORDER BY name")]
            raise ExperimentError(
                f"no experiment {experiment!r} in {self.path}; known: "
                f"{', '.join(known) if known else '(none)'}"
            )
        data: dict[str, Any] = json.loads(rows[0][0])
        return data

    def count(self, experiment: str | None = None) -> int:
        """Logged decisions (of one experiment, or all)."""
        if experiment is None:
            return int(self._read("SELECT COUNT(*) FROM decisions")[0][0])
        sql = "SELECT COUNT(*) FROM decisions WHERE experiment = ?"
        return int(self._read(sql, (experiment,))[0][0])

    def outcome_count(self) -> int:
        """Recorded outcomes (all requests, all sources)."""
        return int(self._read("SELECT COUNT(*) FROM outcomes")[0][0])

    def decisions(
        self, experiment: str, *, label_source: str | None = None
    ) -> list[LoggedDecision]:
        """The experiment's requests in log order, each with its latest outcome.

        Args:
            experiment: the experiment name.
            label_source: only outcomes from this source count (``None``: any source).
        """
        self.definition(experiment)  # raises for an unknown experiment
        source_filter = "WHERE label_source = ?" if label_source is not None else ""
        params: list[Any] = [label_source] if label_source is not None else []
        rows = self._read(
            "WITH latest AS (SELECT request_id, MAX(id) AS id FROM outcomes "
            f"{source_filter} GROUP BY request_id) "
            "SELECT d.request_id, d.arm, d.unit_id, d.unit_id_source, d.policy_id, d.retrieve, "
            "d.retrieved, d.lm_calls, d.retriever_calls, d.latency_ms, o.correct, o.score, "
            "o.label_source, d.created_at FROM decisions d "
            "LEFT JOIN latest l ON l.request_id = d.request_id "
            "LEFT JOIN outcomes o ON o.id = l.id "
            "WHERE d.experiment = ? ORDER BY d.rowid",
            [*params, experiment],
        )
        return [
            LoggedDecision(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                bool(r[5]),
                bool(r[6]),
                r[7],
                r[8],
                r[9],
                None if r[10] is None else bool(r[10]),
                r[11],
                r[12],
                r[13],
            )
            for r in rows
        ]

    def request(self, request_id: str) -> dict[str, Any]:
        """Every column of one logged request (JSON columns decoded).

        Raises:
            ExperimentError: unknown request id.
        """
        with self._lock:
            cursor = self._db.execute(
                f"SELECT {', '.join(_DECISION_COLUMNS)} FROM decisions WHERE request_id = ?",
                (request_id,),
            )
            row = cursor.fetchone()
        if row is None:
            raise ExperimentError(f"no request {request_id!r} in {self.path}")
        out = dict(zip(_DECISION_COLUMNS, row, strict=True))
        for key in ("features", "calls", "timings_ms"):
            out[key] = json.loads(out[key])
        out["retrieve"], out["retrieved"] = bool(out["retrieve"]), bool(out["retrieved"])
        return out


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What differs between two stored experiment definitions, in a few words."""
    changes: list[str] = []
    if old.get("salt") != new.get("salt"):
        changes.append(f"salt {old.get('salt')!r} -> {new.get('salt')!r}")
    old_arms = {a["arm"]: a for a in old.get("arms", [])}
    new_arms = {a["arm"]: a for a in new.get("arms", [])}
    if list(old_arms) != list(new_arms):
        changes.append(f"arms {list(old_arms)} -> {list(new_arms)}")
    for arm in old_arms.keys() & new_arms.keys():
        a, b = old_arms[arm], new_arms[arm]
        if a.get("buckets") != b.get("buckets"):
            changes.append(f"{arm} weight {a.get('weight'):g} -> {b.get('weight'):g}")
        if a.get("policy_id") != b.get("policy_id"):
            changes.append(f"{arm} policy {a.get('policy_id')} -> {b.get('policy_id')}")
    return "; ".join(sorted(changes)) or "definition differs"
