"""The results registry of a study: one SQLite file (``results.sqlite``) per study folder.

Every finished cell (arm, budget, seed) is one row, written in a single transaction once the cell
is done, so a study killed at any moment loses at most the cell that was running, never repeats a
finished one, and readers (the report) never see a half-written row. WAL journaling lets the
report read while the study writes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from lmvalue import __version__
from lmvalue.errors import LmvalueError

SCHEMA_VERSION = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    arm TEXT NOT NULL,
    budget INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL,              -- done | failed
    score REAL,                        -- the study's headline metric on the test set
    metrics TEXT NOT NULL,             -- JSON: every metric of the cell
    config TEXT NOT NULL,              -- JSON: the resolved settings of the cell
    wall_s REAL, cpu_s REAL,
    trainable_params INTEGER, train_flops REAL,
    error TEXT,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (arm, budget, seed)
);
CREATE TABLE IF NOT EXISTS arms (
    arm TEXT PRIMARY KEY,
    status TEXT NOT NULL,              -- done | failed
    info TEXT NOT NULL,                -- JSON: pretraining metrics, model path, compute
    error TEXT
);
"""


class RegistryError(LmvalueError):
    pass


class Registry:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists():
            with open(self.path, "rb") as f:
                head = f.read(16)
            if head and head != _SQLITE_MAGIC:
                raise RegistryError(
                    f"{self.path} is not an SQLite results registry (it starts with {head[:8]!r}); "
                    "it was left untouched. Point the study at another folder, or move the file away"
                )
        existed = self.path.exists() and self.path.stat().st_size > 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        try:
            if existed:  # a valid header does not make a valid file: check every page before use
                problems = [row[0] for row in self.db.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise sqlite3.DatabaseError("; ".join(problems))
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            self._check_version()
        except sqlite3.DatabaseError as e:
            self.db.close()
            raise RegistryError(
                f"{self.path} is damaged and cannot be read ({e}); it was left untouched. Its cells are "
                f"lost: start the study again, in a new folder or over this one (`lmvalue value --overwrite -o "
                f"{self.path.parent}` with the study's other options)"
            ) from None

    def _tx(self):
        return _Transaction(self.db)

    def _check_version(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            with self._tx():
                self.db.execute(
                    "INSERT INTO meta VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),)
                )
                self.db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('lmvalue_version', ?)", (json.dumps(__version__),)
                )
            return
        if json.loads(row[0]) != SCHEMA_VERSION:
            made_by = self.get_meta("lmvalue_version") or "an unknown version"
            raise RegistryError(
                f"the study in {self.path.parent} was made by lmvalue {made_by} (registry schema {row[0]}); "
                f"this lmvalue {__version__} reads schema {SCHEMA_VERSION}. Run the study again in a new folder, "
                "or use the lmvalue version that made it"
            )

    # -- meta -------------------------------------------------------------------------------
    def get_meta(self, key: str):
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    # -- cells ------------------------------------------------------------------------------
    def finished(self) -> set[tuple[str, int, int]]:
        return {(a, b, s) for a, b, s in self.db.execute("SELECT arm, budget, seed FROM cells")}

    def record_cell(
        self,
        arm: str,
        budget: int,
        seed: int,
        *,
        status: str,
        score: float | None,
        metrics: dict,
        config: dict,
        wall_s: float,
        cpu_s: float,
        trainable_params: int | None = None,
        train_flops: float | None = None,
        error: str | None = None,
    ) -> None:
        with self._tx():
            self.db.execute(
                "INSERT OR REPLACE INTO cells VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    arm,
                    budget,
                    seed,
                    status,
                    score,
                    json.dumps(metrics, default=str),
                    json.dumps(config, default=str),
                    wall_s,
                    cpu_s,
                    trainable_params,
                    train_flops,
                    error,
                    time.strftime("%Y-%m-%dT%H:%M:%S"),
                ),
            )

    def cells(self) -> list[dict]:
        cur = self.db.execute("SELECT * FROM cells ORDER BY arm, budget, seed")
        names = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            rec = dict(zip(names, row, strict=True))
            rec["metrics"] = json.loads(rec["metrics"])
            rec["config"] = json.loads(rec["config"])
            out.append(rec)
        return out

    # -- arms (pretraining, once per arm) ---------------------------------------------------
    def record_arm(self, arm: str, *, status: str, info: dict, error: str | None = None) -> None:
        with self._tx():
            self.db.execute(
                "INSERT OR REPLACE INTO arms VALUES (?,?,?,?)",
                (arm, status, json.dumps(info, default=str), error),
            )

    def arm(self, arm: str) -> dict | None:
        row = self.db.execute("SELECT status, info, error FROM arms WHERE arm=?", (arm,)).fetchone()
        if row is None:
            return None
        return {"status": row[0], "info": json.loads(row[1]), "error": row[2]}

    def arms(self) -> dict[str, dict]:
        return {
            a: {"status": s, "info": json.loads(i), "error": e}
            for a, s, i, e in self.db.execute("SELECT * FROM arms")
        }

    def close(self) -> None:
        self.db.close()


class _Transaction:
    def __init__(self, db):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
