"""The local record of a tracked run: everything logged to MLflow is written here first.

One folder per MLflow run, ``<output_dir>/tracking/<name>.<uid8>/``:

- ``run.json``: who the run is (name, kind, parent, experiment, store URI, MLflow run id once
  known), its status, the process that owns it, and ``confirmed``: the journal entries known to
  be in the store;
- ``journal.jsonl``: one JSON line per logging operation (params, epoch metrics, final metrics,
  tags, artifacts, tables, dataset inputs, the model, registry aliases, status), appended
  *before* the store is called;
- ``artifacts/``: the files the run logs that recvae writes (``config.yaml``, ``metrics.json``,
  ``epochs.csv``, ``learning_curves.png``, samples, tables): the local outputs themselves;
- ``heartbeat``: touched while the owning process lives.

The record is the source of truth for ``recvae sync``: entries after ``confirmed`` are replayed,
compared with what the store already holds. Large outputs (the model folder, the top-k file) stay
where the pipeline writes them and are referenced with their size and modification time.

Example::

    rec = RunRecord.create(out / "tracking", name="mult-vae", kind="model", uri=uri,
                           experiment="ml-latest-small (strong)")
    seq = rec.append({"op": "epoch", "epoch": 1, "metrics": {"train/loss": 3.2}, "best": True})
    rec.confirm(seq)          # after the store accepted it
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from recvae.errors import RecvaeError
from recvae.io import atomic_file

RECORDS_DIR = "tracking"
RUN_FILE = "run.json"
JOURNAL_FILE = "journal.jsonl"
HEARTBEAT_FILE = "heartbeat"
ARTIFACTS_DIR = "artifacts"
RECORD_FORMAT = 1
TERMINAL = ("FINISHED", "FAILED", "KILLED")
#: A run whose heartbeat is older than this is dead even if a process with its pid exists
#: (pid reuse, or a process on another host sharing the output folder).
STALE_AFTER = 600.0
HEARTBEAT_EVERY = 30.0


def now_ms() -> int:
    return int(time.time() * 1000)


class RunRecord:
    """One run's local record (see the module docstring). Not safe for two processes at once:
    a record belongs to the process named in ``run.json`` (``pid``, ``host``)."""

    def __init__(
        self, path: Path, meta: dict[str, Any], ops: list[dict[str, Any]], cut: int | None = None,
        cut_line: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.meta = meta
        self.ops = ops
        self._cut = cut  # where the next entry starts (see read_journal): truncated there on append
        self.cut_line = cut_line  # the number of a last line cut short by a kill, for the warning
        self._cut_reported = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ create / load
    @classmethod
    def create(
        cls, records_dir: str | os.PathLike, *, name: str, kind: str, uri: str | None,
        experiment: str | None, artifact_location: str | None = None,
        parent_uid: str | None = None, tags: Mapping[str, str] | None = None,
        display_name: str | None = None,
    ) -> RunRecord:
        """A new record (a new MLflow run to be) under ``records_dir``; owned by this process.
        ``name`` identifies the run (``--resume`` reopens the last of a name); the MLflow run is
        named ``display_name`` (default: ``name``)."""
        uid = uuid.uuid4().hex
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80] or "run"
        path = Path(records_dir) / f"{safe}.{uid[:8]}"
        path.mkdir(parents=True)
        (path / ARTIFACTS_DIR).mkdir()
        meta = {
            "format": RECORD_FORMAT, "uid": uid, "name": name, "kind": kind, "parent": parent_uid,
            "uri": uri, "experiment": experiment, "artifact_location": artifact_location,
            "experiment_id": None, "run_id": None, "status": "RUNNING", "start_time": now_ms(),
            "end_time": None, "confirmed": 0, "resumes": 0, "display_name": display_name or name,
            **owner(),
        }
        record = cls(path, meta, [])
        record.save()
        record.touch()
        record.append({"op": "create", "time": meta["start_time"], "tags": dict(tags or {})})
        return record

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunRecord:
        """Read a record folder. A last journal line cut short by a killed process is skipped
        (see :attr:`cut_line`); any other damaged line is a :class:`RecvaeError` naming it."""
        path = Path(path)
        run_file = path / RUN_FILE
        try:
            meta = json.loads(run_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RecvaeError(f"{run_file}: not a readable recvae run record ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != RECORD_FORMAT:
            raise RecvaeError(f"{run_file}: not a recvae run record of format {RECORD_FORMAT}")
        journal = path / JOURNAL_FILE
        ops, cut, cut_line = read_journal(journal) if journal.is_file() else ([], None, None)
        return cls(path, meta, ops, cut, cut_line)

    def warn_cut(self, stream: TextIO | None = None) -> None:
        """Print, once, that the journal's last line was cut short and is skipped."""
        if self.cut_line is not None and not self._cut_reported:
            self._cut_reported = True
            print(f"recvae: warning: {self.path / JOURNAL_FILE}, line {self.cut_line}: cut short "
                  "(its process was killed while writing it); that entry is skipped",
                  file=stream or sys.stderr, flush=True)

    # ------------------------------------------------------------------ identity
    @property
    def uid(self) -> str:
        return self.meta["uid"]

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def display_name(self) -> str:
        """The MLflow run's name."""
        return self.meta.get("display_name") or self.meta["name"]

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def parent_uid(self) -> str | None:
        return self.meta.get("parent")

    @property
    def run_id(self) -> str | None:
        return self.meta.get("run_id")

    @property
    def status(self) -> str:
        return self.meta["status"]

    @property
    def artifacts_dir(self) -> Path:
        return self.path / ARTIFACTS_DIR

    @property
    def output_root(self) -> Path:
        """The output folder the record belongs to (``<root>/tracking/<record>``)."""
        return self.path.parent.parent

    def set_store(self, *, uri: str | None = None, experiment_id: str | None = None,
                  run_id: str | None = None) -> None:
        """Remember where the run lives in the store."""
        with self._lock:
            if uri is not None:
                self.meta["uri"] = uri
            if experiment_id is not None:
                self.meta["experiment_id"] = experiment_id
            if run_id is not None:
                self.meta["run_id"] = run_id
            self.save()

    # ------------------------------------------------------------------ journal
    @property
    def last_seq(self) -> int:
        return self.ops[-1]["seq"] if self.ops else 0

    @property
    def confirmed(self) -> int:
        return int(self.meta.get("confirmed", 0))

    @property
    def pending(self) -> bool:
        """Entries not known to be in the store, or no run there yet."""
        return self.confirmed < self.last_seq or not self.run_id

    def pending_ops(self) -> list[dict[str, Any]]:
        return [op for op in self.ops if op["seq"] > self.confirmed]

    def append(self, op: Mapping[str, Any]) -> int:
        """Write one entry to the journal (before the store sees it); returns its number."""
        with self._lock:
            entry = {"seq": self.last_seq + 1, **op}
            line = json.dumps(entry, separators=(",", ":")) + "\n"
            if self._cut is not None:  # a cut line goes; a whole unterminated one gets its newline
                self.warn_cut()
                os.truncate(self.path / JOURNAL_FILE, self._cut)
                if self.cut_line is None:
                    line = "\n" + line
                self._cut = self.cut_line = None
            with open(self.path / JOURNAL_FILE, "a", encoding="utf-8") as f:
                f.write(line)
            self.ops.append(entry)
            return entry["seq"]

    def confirm(self, seq: int) -> None:
        """Entries up to ``seq`` are in the store."""
        with self._lock:
            if seq > self.confirmed:
                self.meta["confirmed"] = seq
                self.save()

    def save(self) -> None:
        with self._lock, atomic_file(self.path / RUN_FILE) as tmp:
            tmp.write_text(json.dumps(self.meta, indent=1, sort_keys=True) + "\n")

    # ------------------------------------------------------------------ status & owner
    def set_status(self, status: str, *, reason: str | None = None) -> int:
        """Journal the run's status (RUNNING again when reopened; FINISHED/FAILED/KILLED)."""
        with self._lock:
            t = now_ms()
            op: dict[str, Any] = {"op": "status", "status": status, "time": t}
            if reason:
                op["reason"] = reason
            seq = self.append(op)
            self.meta["status"] = status
            self.meta["end_time"] = t if status in TERMINAL else None
            self.save()
            return seq

    def claim(self) -> None:
        """This process owns the record from now on (a reopened run)."""
        with self._lock:
            self.meta.update(owner())
            self.meta["resumes"] = int(self.meta.get("resumes", 0)) + 1
            self.save()
            self.touch()

    def touch(self) -> None:
        (self.path / HEARTBEAT_FILE).touch()

    def heartbeat_age(self) -> float:
        """Seconds since the owner last showed it was alive."""
        try:
            return time.time() - (self.path / HEARTBEAT_FILE).stat().st_mtime
        except OSError:
            return time.time() - self.meta.get("start_time", 0) / 1000

    def owner_alive(self) -> bool:
        """False when the owning process is gone (see :meth:`death`)."""
        return self.death() is None

    def death(self) -> str | None:
        """Why the owning process is known to be gone: no process with its pid on this host, a
        different process under that pid, or a heartbeat older than :data:`STALE_AFTER`
        (the way to tell for a process on another host); None while it may live."""
        pid, host = self.meta.get("pid"), self.meta.get("host")
        age = self.heartbeat_age()
        if age > STALE_AFTER:
            return f"no heartbeat from process {pid} on {host} for {age:.0f} s"
        if host != socket.gethostname() or pid == os.getpid():
            return None
        if not isinstance(pid, int):
            return f"the record names no process ({pid!r})"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"process {pid} on {host} ended without closing the run"
        except PermissionError:
            pass  # exists, owned by another user
        started = process_start(pid)
        if started is not None and started != self.meta.get("pid_start"):
            return f"process {pid} on {host} ended without closing the run (its pid was reused)"
        return None

    # ------------------------------------------------------------------ what was logged
    def merged(self, kind: str, ops: Iterable[Mapping[str, Any]] | None = None) -> dict[str, str]:
        """The ``params`` or ``tags`` of ``ops`` (default: all journaled), later values winning."""
        out: dict[str, str] = {}
        for op in self.ops if ops is None else ops:
            if op["op"] == kind:
                out.update(op[kind])
        return out

    def metric_points(
        self, ops: Iterable[Mapping[str, Any]] | None = None
    ) -> Iterator[tuple[str, float, int, int]]:
        """``(key, value, timestamp_ms, step)`` of every metric in ``ops`` (default: all
        journaled ones)."""
        for op in self.ops if ops is None else ops:
            if op["op"] == "epoch":
                for k, v in op["metrics"].items():
                    yield k, v, op["time"], op["epoch"]
            elif op["op"] == "metrics":
                for k, v in op["metrics"].items():
                    yield k, v, op["time"], op["step"]

    def epochs(self) -> list[tuple[int, dict[str, float], bool]]:
        """The learning curve so far: ``(epoch, metrics, is_best)`` per epoch, in order (entries
        of the same epoch merged)."""
        curve: dict[int, dict[str, float]] = {}
        best: dict[int, bool] = {}
        for op in self.ops:
            if op["op"] == "epoch":
                curve.setdefault(op["epoch"], {}).update(op["metrics"])
                best[op["epoch"]] = best.get(op["epoch"], False) or bool(op.get("best"))
        return [(e, curve[e], best[e]) for e in sorted(curve)]

    def has(self, kind: str, **match: Any) -> bool:
        """Whether an entry of ``kind`` with these fields was journaled."""
        return any(
            op["op"] == kind and all(op.get(k) == v for k, v in match.items()) for op in self.ops
        )

    # ------------------------------------------------------------------ files
    def ref(self, path: str | os.PathLike) -> str:
        """How the journal names a file: relative to the output folder when inside it."""
        p = Path(path).resolve()
        try:
            return str(p.relative_to(self.output_root.resolve()))
        except ValueError:
            return str(p)

    def resolve(self, ref: str) -> Path:
        p = Path(ref)
        return p if p.is_absolute() else self.output_root / p


#: The fields each kind of journal entry carries (what sync and the tracker read from it).
ENTRY_FIELDS: dict[str, tuple[str, ...]] = {
    "create": ("time",), "params": ("params",), "tags": ("tags",),
    "epoch": ("epoch", "metrics", "time"), "metrics": ("metrics", "step", "time"),
    "artifact": ("file",), "table": ("file", "artifact_file"),
    "input": ("name", "digest", "source", "context", "summary"),
    "model": ("name", "model_dir", "k", "example"),
    "alias": ("registered_model_name", "alias", "model"), "status": ("status", "time"),
}


def read_journal(journal: Path) -> tuple[list[dict[str, Any]], int | None, int | None]:
    """The entries of ``journal``; where the next entry must be written from (None: at the end)
    and, when the last line was cut short (no newline after it, and not a whole entry: a
    process killed while writing it), its number. ``(ops, None, None)`` when the file ends
    cleanly; ``(ops, len(file), None)`` when a whole last entry lacks its newline.

    Any other line that is not UTF-8, not a JSON object, lacks the fields of its kind (see
    :data:`ENTRY_FIELDS`) or does not number itself after the line before raises a
    :class:`RecvaeError` naming the file and the line: the record is damaged, and syncing part
    of it would put a run into the store that the record cannot complete."""
    try:
        data = journal.read_bytes()
    except OSError as e:
        raise RecvaeError(f"{journal}: cannot read the run's journal ({e.strerror})") from None
    lines = data.split(b"\n")
    ops: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw.decode("utf-8"))
            problem = None
        except UnicodeDecodeError as e:
            entry, problem = None, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})"
        except json.JSONDecodeError as e:
            entry, problem = None, f"not JSON ({e.msg} at column {e.colno})"
        if problem is None:
            problem = _entry_problem(entry, ops[-1]["seq"] if ops else 0)
        if problem is None:
            ops.append(entry)
            continue
        if number == len(lines) and entry is None:  # the last line, without its newline
            return ops, len(data) - len(raw), number
        raise RecvaeError(
            f"{journal}, line {number}: {problem}; expected one JSON journal entry per line "
            "(repair or delete that line, then try again)"
        )
    if data and not data.endswith(b"\n"):  # a whole last entry whose newline was not written
        return ops, len(data), None
    return ops, None, None


def _entry_problem(entry: Any, previous_seq: int) -> str | None:
    """What is wrong with a decoded journal entry (None when nothing is)."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    seq, kind = entry.get("seq"), entry.get("op")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq <= previous_seq:
        return f"entry number (seq) {seq!r} does not follow {previous_seq}"
    if kind not in ENTRY_FIELDS:
        return f"unknown entry kind (op) {kind!r}"
    missing = [f for f in ENTRY_FIELDS[kind] if f not in entry]
    if missing:
        return f"a {kind!r} entry without {', '.join(missing)}"
    return None


def owner() -> dict[str, Any]:
    """This process, as a record names its owner."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "pid_start": process_start(os.getpid())}


def process_start(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux), to tell a reused pid
    from the original process; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces or parentheses: split after its last ")"
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[19]) if len(fields) > 19 else None


def file_stamp(path: Path) -> dict[str, int]:
    """Size and modification time of a file (for a folder, of its newest file): what a record
    keeps of the large outputs it references, to notice when they were replaced."""
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        return {
            "size": sum(p.stat().st_size for p in files),
            "mtime_ns": max((p.stat().st_mtime_ns for p in files), default=0),
        }
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def list_records(output_dir: str | os.PathLike) -> list[RunRecord]:
    """Every run record under ``output_dir/tracking``, parents before their children, then by
    start time."""
    root = Path(output_dir) / RECORDS_DIR
    if not root.is_dir():
        return []
    records = [RunRecord.load(p) for p in sorted(root.iterdir()) if (p / RUN_FILE).is_file()]
    records.sort(key=lambda r: (r.meta.get("start_time", 0), r.path.name))
    by_uid = {r.uid: r for r in records}

    def depth(r: RunRecord) -> int:
        d, seen = 0, set()
        while r.parent_uid in by_uid and r.uid not in seen:
            seen.add(r.uid)
            r, d = by_uid[r.parent_uid], d + 1
        return d

    return sorted(records, key=depth)  # stable: start order within a depth


class Heartbeat:
    """A daemon thread touching the heartbeat of the records this process has open; it ends
    when none is left open."""

    def __init__(self, every: float = HEARTBEAT_EVERY) -> None:
        self.every = every
        self.records: dict[str, RunRecord] = {}
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None  # the running thread's

    def add(self, record: RunRecord) -> None:
        with self._lock:
            self.records[record.uid] = record
            if self._stop is None:
                self._stop = threading.Event()
                threading.Thread(
                    target=self._beat, args=(self._stop,), name="recvae-heartbeat", daemon=True
                ).start()

    def remove(self, record: RunRecord) -> None:
        with self._lock:
            self.records.pop(record.uid, None)
            if not self.records and self._stop is not None:
                self._stop.set()
                self._stop = None

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(self.every):
            with self._lock:
                records = list(self.records.values())
            for r in records:
                try:
                    r.touch()
                except OSError:
                    pass  # the folder was removed under us; its owner reports its own errors
