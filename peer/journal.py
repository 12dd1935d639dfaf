"""The job journal: every state change of a job in SQLite, so a crashed coordinator resumes.

One journal per output file, ``.<output name>.swarm/journal.sqlite`` beside it, next to the
job's chunk files. The coordinator writes each change in its own transaction (WAL mode,
``synchronous=NORMAL``: a committed change survives a process crash; on power loss at most
the last transactions are lost, and every chunk they described is re-verified anyway)
before it acts on it: a result is journalled, with its digest, before its peer hears it was
accepted. On resume nothing in the journal is trusted without checking: the input must be
the same file (size, mtime, digests of its head and tail) and every chunk file must still
have the digest recorded when it was accepted.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarm.errors import UsageError

__all__ = [
    "JOURNAL_NAME",
    "InputIdentity",
    "Journal",
    "JournalSummary",
    "file_digest",
    "find_journals",
    "input_identity",
    "output_is_ours",
    "output_stamp",
    "summarize",
    "work_dir_for",
]

JOURNAL_NAME = "journal.sqlite"
# Meta key: the merged output's stamp (see output_stamp), written just before the rename.
MERGED_KEY = "merged_stamp"
SCHEMA_VERSION = 1
# Head and tail digests catch an input rewritten in place with the same size and mtime
# (an editor's save, a re-download); 1 MiB each is read in milliseconds.
EDGE_BYTES = 1 << 20
_DIGEST_BLOCK = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    idx INTEGER PRIMARY KEY, first INTEGER NOT NULL, frames INTEGER NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending', file TEXT, digest TEXT, bytes_out INTEGER,
    bytes_in INTEGER, peer TEXT, encode_s REAL);
CREATE TABLE IF NOT EXISTS attempts (
    id TEXT PRIMARY KEY, chunk INTEGER NOT NULL, peer TEXT NOT NULL, started REAL NOT NULL,
    ended REAL, outcome TEXT NOT NULL DEFAULT 'running', reason TEXT NOT NULL DEFAULT '',
    run INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class InputIdentity:
    path: str
    size: int
    mtime_ns: int
    head: str
    tail: str

    def to_json(self) -> str:
        return json.dumps([self.path, self.size, self.mtime_ns, self.head, self.tail])

    @classmethod
    def from_json(cls, text: str) -> InputIdentity:
        p, s, m, h, t = json.loads(text)
        return cls(str(p), int(s), int(m), str(h), str(t))

    def same_file(self, other: InputIdentity) -> bool:
        return (self.size, self.mtime_ns, self.head, self.tail) == (
            other.size, other.mtime_ns, other.head, other.tail)


def input_identity(path: str) -> InputIdentity:
    st = os.stat(path)
    with open(path, "rb") as fh:
        head = hashlib.sha256(fh.read(EDGE_BYTES)).hexdigest()
        fh.seek(max(0, st.st_size - EDGE_BYTES))
        tail = hashlib.sha256(fh.read(EDGE_BYTES)).hexdigest()
    return InputIdentity(os.path.abspath(path), st.st_size, st.st_mtime_ns, head, tail)


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_DIGEST_BLOCK):
            h.update(block)
    return h.hexdigest()


def work_dir_for(output: str) -> Path:
    """The job's work directory: a fixed name beside the output, so a rerun finds it."""
    out = Path(output).resolve()
    return out.parent / f".{out.name}.swarm"


def output_stamp(path: str) -> str:
    """Device, inode, size and mtime: a rename keeps all four, any rewrite changes one."""
    st = os.stat(path)
    return json.dumps([st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns])


def output_is_ours(output: str) -> bool:
    """Whether the file at ``output`` is the one a run of this job renamed there.

    A run renames its verified output last and removes its journal right after; a crash in
    between leaves both. The journal recorded the merged file's stamp before the rename, so
    a rerun can tell that file (ours: it may be replaced) from one a user put there.
    """
    journal = work_dir_for(output) / JOURNAL_NAME
    if not journal.is_file():
        return False
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (MERGED_KEY,)).fetchone()
        finally:
            db.close()
        return row is not None and row[0] == output_stamp(output)
    except (sqlite3.Error, OSError):
        return False


@dataclass(frozen=True, slots=True)
class JournalSummary:
    path: str
    output: str
    input: str
    state: str
    chunks: int
    done: int
    updated: float
    locked: bool


class Journal:
    """A job's journal; ``open`` takes an exclusive lock, so two coordinators cannot share it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.path = workdir / JOURNAL_NAME
        self._lock_fh = open(workdir / ".lock", "a+b")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_fh.close()
            raise UsageError(
                f"another swarm encode is writing {workdir.name[1:-6]} (journal locked)"
            ) from None
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self.writes = 0
        self.write_s = 0.0
        self.run = int(self.get("runs", "0") or "0") + 1
        self.set("runs", str(self.run))

    def close(self) -> None:
        self.db.close()
        self._lock_fh.close()

    # -- writes: one transaction each ------------------------------------------------------
    def _write(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        t0 = time.perf_counter()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(sql, args)
        self.writes += 1
        self.write_s += time.perf_counter() - t0

    def set(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def reset(self) -> None:
        """Forget a previous job (keeps the run counter)."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM chunks")
            self.db.execute("DELETE FROM attempts")
            self.db.execute("DELETE FROM meta WHERE key != 'runs'")

    def write_plan(self, chunks: list[tuple[int, int]]) -> None:
        t0 = time.perf_counter()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM chunks")
            self.db.executemany("INSERT INTO chunks(idx, first, frames) VALUES (?, ?, ?)",
                                [(i, f, n) for i, (f, n) in enumerate(chunks)])
        self.writes += 1
        self.write_s += time.perf_counter() - t0

    def attempt_started(self, attempt: str, chunk: int, peer: str, at: float) -> None:
        self._write("INSERT OR REPLACE INTO attempts(id, chunk, peer, started, run) "
                    "VALUES (?, ?, ?, ?, ?)", (f"{self.run}:{attempt}", chunk, peer, at,
                                               self.run))

    def attempt_ended(self, attempt: str, outcome: str, reason: str, at: float) -> None:
        self._write("UPDATE attempts SET ended = ?, outcome = ?, reason = ? WHERE id = ?",
                    (at, outcome, reason[:500], f"{self.run}:{attempt}"))

    def chunk_done(self, chunk: int, file: str, digest: str, bytes_out: int, bytes_in: int,
                   peer: str, encode_s: float) -> None:
        self._write("UPDATE chunks SET state = 'done', file = ?, digest = ?, bytes_out = ?, "
                    "bytes_in = ?, peer = ?, encode_s = ? WHERE idx = ?",
                    (os.path.basename(file), digest, bytes_out, bytes_in, peer, encode_s,
                     chunk))

    def chunk_split(self, chunk: int, frames: int, rest: int, first: int, rest_frames: int
                    ) -> None:
        """The scheduler cut a pending chunk: it keeps ``frames``, a new chunk ``rest``
        starting at frame ``first`` takes the rest (one transaction: the plan stays whole)."""
        t0 = time.perf_counter()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("UPDATE chunks SET frames = ? WHERE idx = ?", (frames, chunk))
            self.db.execute("INSERT INTO chunks(idx, first, frames) VALUES (?, ?, ?)",
                            (rest, first, rest_frames))
        self.writes += 1
        self.write_s += time.perf_counter() - t0

    def chunk_lost(self, chunk: int) -> None:
        self._write("UPDATE chunks SET state = 'pending', file = NULL, digest = NULL "
                    "WHERE idx = ?", (chunk,))

    # -- reads -----------------------------------------------------------------------------
    def plan(self) -> list[tuple[int, int]]:
        """(first frame, frames) of every chunk, by index: in source order only until a
        chunk has been cut (its rest is a new chunk at the end)."""
        return [(f, n) for f, n in self.db.execute(
            "SELECT first, frames FROM chunks ORDER BY idx")]

    def done_chunks(self) -> Iterator[tuple[int, str, str, dict[str, Any]]]:
        """(index, file name, digest, record) of chunks journalled as verified."""
        for idx, file, digest, bout, bin_, peer, enc in self.db.execute(
                "SELECT idx, file, digest, bytes_out, bytes_in, peer, encode_s FROM chunks "
                "WHERE state = 'done' ORDER BY idx"):
            yield idx, file or "", digest or "", {"bytes_out": bout or 0, "bytes_in": bin_ or 0,
                                                   "peer": peer or "", "encode_s": enc or 0.0}

    def attempts(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT id, chunk, peer, started, ended, outcome, reason, run FROM attempts "
            "ORDER BY run, started")
        keys = ("id", "chunk", "peer", "started", "ended", "outcome", "reason", "run")
        return [dict(zip(keys, r, strict=True)) for r in rows]


def summarize(journal_path: Path) -> JournalSummary | None:
    """Read a journal without locking it; None if it is not one of ours."""
    try:
        db = sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            total, done = db.execute(
                "SELECT COUNT(*), SUM(state = 'done') FROM chunks").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    locked = False
    lock = journal_path.parent / ".lock"
    if lock.exists():
        with open(lock, "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
            except BlockingIOError:
                locked = True
    ident = meta.get("input")
    state = meta.get("state", "unknown")
    if locked:
        state = "running"
    elif state in ("encoding", "merging"):
        # Every live encode holds the lock (flock dies with its process): a journal that
        # says it is at work but that nobody holds was left by a crash, and can resume.
        state = "crashed"
    return JournalSummary(
        path=str(journal_path), output=meta.get("output", ""),
        input=InputIdentity.from_json(ident).path if ident else "",
        state=state, chunks=int(total or 0),
        done=int(done or 0), updated=journal_path.stat().st_mtime, locked=locked)


def find_journals(directory: str) -> list[JournalSummary]:
    out = []
    for wd in sorted(Path(directory).glob(".*.swarm")):
        j = wd / JOURNAL_NAME
        if j.is_file():
            s = summarize(j)
            if s is not None:
                out.append(s)
    return out
