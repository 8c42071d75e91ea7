"""The model registry: SQLite (stdlib) metadata, bundle files under ``models/<name>/<version>/``.

Registration copies the bundle to a private staging directory first, then, in
one ``BEGIN IMMEDIATE`` transaction, takes the next version number, renames the
directory into place and inserts the row. Two processes registering at once
serialise on that lock; a process killed half-way leaves at most a staging
directory or an orphan version directory (no row), which the next registration
clears. Version numbers never repeat, even after ``rm``.
"""

from __future__ import annotations

import builtins
import json
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from joules.bundle import Bundle, sha256_file
from joules.errors import IntegrityError, ModelNotFoundError, RegistryError
from joules.registry.names import ModelRef, parse_ref, parse_version, validate_name
from joules.settings import Settings, load_settings

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    stage TEXT NOT NULL DEFAULT 'none',
    created_at TEXT NOT NULL,
    task TEXT NOT NULL,
    labels TEXT NOT NULL,
    checksums TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    lineage TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, last_version INTEGER NOT NULL);
"""


class Stage(StrEnum):
    NONE = "none"
    STAGING = "staging"
    PRODUCTION = "production"


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    stage: Stage
    created_at: str
    task: str
    labels: list[str]
    checksums: dict[str, str]
    size_bytes: int
    metrics: dict[str, Any]
    lineage: list[dict[str, Any]]
    path: Path

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "stage": str(self.stage),
            "created_at": self.created_at,
            "task": self.task,
            "labels": self.labels,
            "path": str(self.path),
            "size_bytes": self.size_bytes,
            "metrics": self.metrics,
            "lineage": self.lineage,
            "files": self.checksums,
        }


class Registry:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self.home = self.settings.home
        self.models_dir = self.settings.models_dir
        self.db_path = self.settings.registry_path
        self._ready = False

    # -- plumbing --------------------------------------------------------------------------------

    @contextmanager
    def _connect(self, *, write: bool = False) -> Iterator[sqlite3.Connection]:
        if not write and not self.db_path.exists():
            # Reading an empty registry must not create files.
            conn = sqlite3.connect(":memory:")
            conn.executescript(_SCHEMA)
        else:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
            if not self._ready:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
                self._ready = True
        conn.row_factory = sqlite3.Row
        try:
            if write:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            else:
                yield conn
        finally:
            conn.close()

    def _row(self, row: sqlite3.Row) -> ModelVersion:
        return ModelVersion(
            name=row["name"],
            version=row["version"],
            stage=Stage(row["stage"]),
            created_at=row["created_at"],
            task=row["task"],
            labels=json.loads(row["labels"]),
            checksums=json.loads(row["checksums"]),
            size_bytes=row["size_bytes"],
            metrics=json.loads(row["metrics"]),
            lineage=json.loads(row["lineage"]),
            path=self.models_dir / row["name"] / str(row["version"]),
        )

    # -- writing ---------------------------------------------------------------------------------

    def register(self, source: str | Path, name: str, *, stage: Stage | str = Stage.NONE) -> ModelVersion:
        """Copy the bundle at ``source`` into the registry as the next version of ``name``."""
        validate_name(name)
        stage = _stage(stage)
        bundle = Bundle.load(source)  # validates and refuses pickles before anything is written
        self.models_dir.mkdir(parents=True, exist_ok=True)
        staging = self.models_dir / f".staging-{uuid.uuid4().hex}"
        try:
            shutil.copytree(bundle.path, staging, symlinks=False)
            staged = Bundle(staging, bundle.spec).with_spec(name=name)
            staged.save()
            checksums = staged.checksums()
            size = staged.size_bytes()
            with self._connect(write=True) as conn:
                row = conn.execute("SELECT last_version FROM counters WHERE name = ?", (name,)).fetchone()
                latest = conn.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()[0]
                version = max(row[0] if row else 0, latest or 0) + 1
                target = self.models_dir / name / str(version)
                if target.exists():  # orphan of a registration killed after its rename
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                staging.rename(target)
                if stage is Stage.PRODUCTION:
                    conn.execute("UPDATE versions SET stage = 'none' WHERE name = ? AND stage = 'production'", (name,))
                conn.execute(
                    "INSERT INTO versions (name, version, stage, created_at, task, labels, checksums, size_bytes,"
                    " metrics, lineage) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        version,
                        str(stage),
                        datetime.now(UTC).isoformat(timespec="seconds"),
                        str(staged.spec.task),
                        json.dumps(list(staged.spec.labels)),
                        json.dumps(checksums),
                        size,
                        json.dumps(staged.spec.metrics),
                        json.dumps(list(staged.spec.lineage)),
                    ),
                )
                conn.execute(
                    "INSERT INTO counters (name, last_version) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET last_version = excluded.last_version",
                    (name, version),
                )
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return self.get(ModelRef(name, version))

    def promote(self, name: str, version: int | str, stage: Stage | str = Stage.PRODUCTION) -> ModelVersion:
        """Move ``name:version`` to ``stage``; promoting to production demotes the previous one to none."""
        validate_name(name)
        v = parse_version(version)
        stage = _stage(stage)
        with self._connect(write=True) as conn:
            if conn.execute("SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, v)).fetchone() is None:
                raise self._not_found(conn, ModelRef(name, v))
            if stage is Stage.PRODUCTION:
                conn.execute("UPDATE versions SET stage = 'none' WHERE name = ? AND stage = 'production'", (name,))
            conn.execute("UPDATE versions SET stage = ? WHERE name = ? AND version = ?", (str(stage), name, v))
        return self.get(ModelRef(name, v))

    def remove(self, name: str, version: int | str, *, force: bool = False) -> ModelVersion:
        validate_name(name)
        mv = self.get(ModelRef(name, parse_version(version)))
        if mv.stage is Stage.PRODUCTION and not force:
            raise RegistryError(
                f"{mv.ref} is the production version; promote another version first, "
                "or pass --force to remove it anyway"
            )
        with self._connect(write=True) as conn:
            conn.execute("DELETE FROM versions WHERE name = ? AND version = ?", (mv.name, mv.version))
        shutil.rmtree(mv.path, ignore_errors=True)
        return mv

    # -- reading ---------------------------------------------------------------------------------

    def list(self, name: str | None = None) -> list[ModelVersion]:
        with self._connect() as conn:
            if name is None:
                rows = conn.execute("SELECT * FROM versions ORDER BY name, version").fetchall()
            else:
                validate_name(name)
                rows = conn.execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,)).fetchall()
        return [self._row(r) for r in rows]

    def get(self, ref: str | ModelRef) -> ModelVersion:
        """``NAME`` is the production version, ``NAME:VERSION`` that version."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        with self._connect() as conn:
            if r.version is None:
                row = conn.execute(
                    "SELECT * FROM versions WHERE name = ? AND stage = 'production'", (r.name,)
                ).fetchone()
            else:
                row = conn.execute(
                    "SELECT * FROM versions WHERE name = ? AND version = ?", (r.name, r.version)
                ).fetchone()
            if row is None:
                raise self._not_found(conn, r)
        return self._row(row)

    def production_version(self, name: str) -> int | None:
        """The production version of ``name`` (a cheap query: servers poll it)."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT version FROM versions WHERE name = ? AND stage = 'production'", (name,)
            ).fetchone()
        return row[0] if row else None

    def production_models(self) -> builtins.list[ModelVersion]:
        return [m for m in self.list() if m.stage is Stage.PRODUCTION]

    def load(self, ref: str | ModelRef, *, verify: bool = True) -> Bundle:
        """The bundle of ``ref``, its files checked against the recorded sha256."""
        mv = self.get(ref)
        if verify:
            self.verify(mv)
        return Bundle.load(mv.path)

    def verify(self, mv: ModelVersion) -> None:
        if not mv.path.is_dir():
            raise IntegrityError(
                f"{mv.ref}: its directory {str(mv.path)!r} is missing; remove the version with `joules models rm`"
            )
        present = {str(p.relative_to(mv.path)) for p in mv.path.rglob("*") if p.is_file()}
        extra = sorted(present - set(mv.checksums))
        if extra:
            raise IntegrityError(
                f"{mv.ref}: files {extra} were added after registration; remove them or register a new version"
            )
        for rel, want in mv.checksums.items():
            path = mv.path / rel
            if not path.is_file():
                raise IntegrityError(f"{mv.ref}: registered file {rel!r} is missing from {str(mv.path)!r}")
            got = sha256_file(path)
            if got != want:
                raise IntegrityError(
                    f"{mv.ref}: {rel!r} does not match its registered sha256 "
                    f"(expected {want[:12]}..., got {got[:12]}...); "
                    "the file was changed or corrupted after registration: re-register the model"
                )

    def _not_found(self, conn: sqlite3.Connection, r: ModelRef) -> ModelNotFoundError:
        versions = [
            row[0] for row in conn.execute("SELECT version FROM versions WHERE name = ? ORDER BY version", (r.name,))
        ]
        if not versions:
            names = [row[0] for row in conn.execute("SELECT DISTINCT name FROM versions ORDER BY name")]
            known = f"registered models: {', '.join(names)}" if names else "the registry is empty"
            return ModelNotFoundError(f"no model named {r.name!r} ({known}); train or import one first")
        if r.version is None:
            return ModelNotFoundError(
                f"{r.name!r} has no production version (versions: {versions}); name one as {r.name}:{versions[-1]} "
                f"or promote one with `joules models promote {r.name} {versions[-1]}`"
            )
        return ModelNotFoundError(f"{r.name!r} has no version {r.version}; its versions are {versions}")


def _stage(stage: Stage | str) -> Stage:
    try:
        return Stage(stage)
    except ValueError:
        raise RegistryError(f"unknown stage {stage!r}; stages are {[str(s) for s in Stage]}") from None
