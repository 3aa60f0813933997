"""Putting local run records into the tracking store: live, entry by entry, or later with
``recvae sync``, completing what the store lacks.

:class:`StoreWriter` applies journal entries of a :class:`~recvae.tracking.record.RunRecord` to
one store. :meth:`StoreWriter.apply` sends an entry as it is (the tracker's live path, where
every earlier entry is known to be in the store); :meth:`StoreWriter.complete` first reads what
the store holds and sends only what is missing, so it can be repeated and never duplicates:
params by key and value, metrics by key and step, tags by value, artifacts and tables by path,
the dataset input by name, digest and context, the model by name (its artifacts, run link,
linked metrics and registered version each checked), registry aliases by target, and the final
status.

Example::

    report = sync_output("runs/quickstart")          # what `recvae sync runs/quickstart` does
    print(report.lines)
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from recvae.errors import RecvaeError
from recvae.tracking.guard import bounded_call, describe_error, outage_errors
from recvae.tracking.record import TERMINAL, RunRecord, file_stamp, list_records
from recvae.tracking.store import check_tracking_server, ensure_experiment, open_store

RUN_UID_TAG = "recvae.run_uid"
PARENT_TAG = "mlflow.parentRunId"
#: "true" on a run whose store copy lacks part of its local record (see mark_incomplete)
OFFLINE_TAG = "recvae.offline"
NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI
MAX_PARAMS = 100  # per log_batch, MLflow's limit
MAX_METRICS = 1000
MAX_TAGS = 100


@dataclass
class Added:
    """What one completion added to the store."""

    params: int = 0
    metrics: int = 0
    tags: int = 0
    artifacts: int = 0
    inputs: int = 0
    models: int = 0
    tables: int = 0
    aliases: int = 0
    status: str | None = None
    created: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def nothing(self) -> bool:
        return not (self.params or self.metrics or self.tags or self.artifacts or self.inputs
                    or self.models or self.tables or self.aliases or self.status or self.created)

    def describe(self) -> str:
        parts = [f"+{n} {what}" for n, what in (
            (self.params, "params"), (self.metrics, "metric points"), (self.tags, "tags"),
            (self.artifacts, "artifacts"), (self.tables, "tables"), (self.inputs, "inputs"),
            (self.models, "models"), (self.aliases, "aliases"),
        ) if n]
        if self.created:
            parts.insert(0, "created")
        if self.status:
            parts.append(f"status {self.status}")
        return ", ".join(parts) or "nothing to add"


class StoreWriter:
    """Writes run records into the store behind ``client`` (at ``uri``)."""

    def __init__(self, client: MlflowClient, uri: str) -> None:
        self.client = client
        self.uri = uri
        self._experiments: dict[str, str] = {}

    # ------------------------------------------------------------------ runs
    def experiment(self, name: str, artifact_location: str | None = None) -> str:
        """The id of experiment ``name`` (created when missing)."""
        if name not in self._experiments:
            self._experiments[name] = ensure_experiment(self.client, self.uri, name, artifact_location)
        return self._experiments[name]

    def experiment_id(self, record: RunRecord) -> str:
        return self.experiment(record.meta.get("experiment") or "recvae",
                               record.meta.get("artifact_location"))

    def open_run(self, record: RunRecord, parent_run_id: str | None) -> tuple[str, bool]:
        """The record's run in the store: by its stored id, else by its ``recvae.run_uid`` tag,
        else a new run with the record's start time and tags. Returns ``(run_id, created)``."""
        exp_id = self.experiment_id(record)
        if record.run_id and record.meta.get("uri") == self.uri:
            try:
                self.client.get_run(record.run_id)
                record.set_store(experiment_id=exp_id)
                return record.run_id, False
            except MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
        found = self.client.search_runs(
            [exp_id], filter_string=f"tags.`{RUN_UID_TAG}` = '{record.uid}'", max_results=1
        )
        if found:
            run_id, created = found[0].info.run_id, False
        else:
            create = next(op for op in record.ops if op["op"] == "create")
            tags = {**create.get("tags", {}), RUN_UID_TAG: record.uid}
            if parent_run_id:
                tags[PARENT_TAG] = parent_run_id
            run = self.client.create_run(
                exp_id, start_time=record.meta["start_time"], tags=tags, run_name=record.display_name
            )
            run_id, created = run.info.run_id, True
        record.set_store(uri=self.uri, experiment_id=exp_id, run_id=run_id)
        return run_id, created

    # ------------------------------------------------------------------ the offline marker
    def mark_incomplete(self, record: RunRecord, output_dir: str | os.PathLike, reason: str = "") -> None:
        """Say in the store that the record's run there is incomplete: the tag
        ``recvae.offline=true`` and, in the run's note (its description in the MLflow UI), where
        the rest is and that ``recvae sync <output_dir>`` completes it. :meth:`complete` removes
        both (the note goes back to the run's own description)."""
        assert record.run_id is not None
        description = _journaled_tags(record).get(NOTE_TAG)
        where = f"{record.path} on {record.meta.get('host') or 'its host'}"
        note = (f"Incomplete in this store{': ' + reason if reason else ''}. The rest of this run "
                f"is in its local record {where}; `recvae sync {Path(output_dir).resolve()}` "
                "completes it.")
        self._tags(record.run_id, {OFFLINE_TAG: "true",
                                   NOTE_TAG: f"{description}\n\n{note}" if description else note})

    def _clear_incomplete(self, record: RunRecord, tags: Mapping[str, str]) -> None:
        """Undo :meth:`mark_incomplete` on a run that is now complete (``tags``: the store's)."""
        if OFFLINE_TAG not in tags:
            return
        assert record.run_id is not None
        description = _journaled_tags(record).get(NOTE_TAG)
        if description is None:
            self.client.delete_tag(record.run_id, NOTE_TAG)
        elif tags.get(NOTE_TAG) != description:
            self._tags(record.run_id, {NOTE_TAG: description})
        self.client.delete_tag(record.run_id, OFFLINE_TAG)

    # ------------------------------------------------------------------ entries
    def apply(self, record: RunRecord, op: Mapping[str, Any]) -> Any:
        """Send one journal entry as it is; returns what the store answered for a model (its
        :class:`~recvae.tracking.logged_model.LoggedModelInfo`), else None."""
        run_id = record.run_id
        assert run_id is not None
        kind = op["op"]
        if kind == "params":
            self._params(run_id, op["params"])
        elif kind in ("epoch", "metrics"):
            step = op["epoch"] if kind == "epoch" else op["step"]
            self._metrics(run_id, [(k, v, op["time"], step) for k, v in op["metrics"].items()])
        elif kind == "tags":
            self._tags(run_id, op["tags"])
        elif kind == "artifact":
            self._artifact(record, op)
        elif kind == "input":
            self._input(run_id, op)
        elif kind == "table":
            self._table(record, op)
        elif kind == "model":
            return self._model(record, op)[0]
        elif kind == "alias":
            self._alias(record, op)
        elif kind == "status":
            self._status(run_id, op)
        elif kind != "create":  # the run itself: made by open_run
            raise RecvaeError(f"{record.path}: unknown journal entry {kind!r}")
        return None

    def complete(self, record: RunRecord) -> Added:
        """Send the record's unconfirmed entries that the store lacks; confirm them all."""
        run_id = record.run_id
        assert run_id is not None
        run = self.client.get_run(run_id)
        ops = record.pending_ops()
        upto = record.last_seq
        added = Added()

        params = record.merged("params", ops)
        have = run.data.params
        new = {k: v for k, v in params.items() if k not in have}
        for k, v in params.items():
            if k in have and have[k] != v:
                added.problems.append(f"param {k} is {have[k]!r} in the store, {v!r} here: kept")
        self._params(run_id, new)
        added.params = len(new)

        tags = record.merged("tags", ops)
        changed = {k: v for k, v in tags.items() if run.data.tags.get(k) != v}
        self._tags(run_id, changed)
        added.tags = len(changed)

        points = list(record.metric_points(ops))
        steps: dict[str, set[int]] = {}
        for key in {k for k, *_ in points}:
            steps[key] = {m.step for m in self.client.get_metric_history(run_id, key)}
        missing, seen = [], set()
        for key, value, ts, step in points:
            if step in steps[key] or (key, step) in seen:
                continue
            seen.add((key, step))
            missing.append((key, value, ts, step))
        self._metrics(run_id, missing)
        added.metrics = len(missing)

        # a later entry for the same artifact path or model name supersedes an earlier one
        # (a resumed run saves its model again)
        artifacts = {_dest(op): op for op in ops if op["op"] == "artifact"}
        listed: dict[str, set[str]] = {}
        for dest, op in artifacts.items():
            folder = op.get("artifact_path") or ""
            if folder not in listed:
                listed[folder] = {f.path for f in self.client.list_artifacts(run_id, folder or None)}
            if dest in listed[folder]:
                continue
            problem = self._stale(record, op)
            if problem:
                added.problems.append(problem)
                continue
            self._artifact(record, op)
            added.artifacts += 1

        inputs = {(d.dataset.name, d.dataset.digest, _context(d)) for d in run.inputs.dataset_inputs}
        for op in ops:
            if op["op"] == "input" and (op["name"], op["digest"], op["context"]) not in inputs:
                self._input(run_id, op)
                inputs.add((op["name"], op["digest"], op["context"]))
                added.inputs += 1

        tables = {op["artifact_file"]: op for op in ops if op["op"] == "table"}
        shown = _logged_tables(run.data.tags)
        for artifact_file, op in tables.items():
            folder = posixpath.dirname(artifact_file)
            if folder not in listed:
                listed[folder] = {f.path for f in self.client.list_artifacts(run_id, folder or None)}
            if artifact_file in listed[folder] and artifact_file in shown:
                continue
            problem = self._stale(record, op)
            if problem:
                added.problems.append(problem)
                continue
            self._table(record, op)
            added.tables += 1

        # every model entry is completed (the model function adds only what is missing)
        models = {op["name"]: op for op in ops if op["op"] == "model"}
        for op in models.values():
            _, changed = self._model(record, op, added.problems)
            added.models += int(changed)
        for op in {(o["registered_model_name"], o["alias"]): o for o in ops if o["op"] == "alias"}.values():
            added.aliases += int(self._alias(record, op))

        final = next((op for op in reversed(record.ops) if op["op"] == "status"), None)
        if final is not None and final["status"] != run.info.status:
            self._status(run_id, final)
            added.status = final["status"]
        self._clear_incomplete(record, run.data.tags)
        record.confirm(upto)
        return added

    # ------------------------------------------------------------------ store calls
    def _params(self, run_id: str, params: Mapping[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), MAX_PARAMS):
            self.client.log_batch(run_id, params=items[i : i + MAX_PARAMS])

    def _metrics(self, run_id: str, points: Iterable[tuple[str, float, int, int]]) -> None:
        items = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in points]
        for i in range(0, len(items), MAX_METRICS):
            self.client.log_batch(run_id, metrics=items[i : i + MAX_METRICS])

    def _tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), MAX_TAGS):
            self.client.log_batch(run_id, tags=items[i : i + MAX_TAGS])

    def _artifact(self, record: RunRecord, op: Mapping[str, Any]) -> None:
        path = record.resolve(op["file"])
        self.client.log_artifact(record.run_id, str(path), op.get("artifact_path"))

    def _input(self, run_id: str, op: Mapping[str, Any]) -> None:
        import warnings

        import mlflow.data
        import pandas as pd
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        with warnings.catch_warnings():
            # MLflow hints about integer columns (the summary's counts are whole numbers and never
            # missing) and ambiguous local sources: noise here. The schema is inferred, and the
            # integer hint given, only when the entity is built.
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_pandas(
                pd.DataFrame([op["summary"]]), source=op["source"], name=op["name"],
                digest=op["digest"],
            )
            dataset = ds._to_mlflow_entity()
        entity = DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, op["context"])])
        try:
            self.client.log_inputs(run_id, datasets=[entity])
        except MlflowException as e:
            if not _lost_insert_race(e):
                raise
            # Two runs logged the same dataset at once: MLflow's SQL store looks the dataset up
            # and inserts it when missing, without a lock, so on a server over PostgreSQL (or
            # MySQL) the slower of two workers fails on the table's key. The row exists now:
            # the same call links it.
            self.client.log_inputs(run_id, datasets=[entity])

    def _table(self, record: RunRecord, op: Mapping[str, Any]) -> None:
        """The table file as an artifact, and the run's ``mlflow.loggedArtifacts`` tag naming it
        a table: what ``MlflowClient.log_table`` does, except that logging it again replaces
        the table (``log_table`` appends the rows to the artifact already there)."""
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

        run_id = record.run_id
        artifact_file = op["artifact_file"]
        folder = posixpath.dirname(artifact_file) or None
        path = record.resolve(op["file"])
        if path.name != posixpath.basename(artifact_file):
            raise RecvaeError(f"{record.path}: table {artifact_file!r} names the file {path.name}")
        self.client.log_artifact(run_id, str(path), folder)
        tags = self.client.get_run(run_id).data.tags
        shown = json.loads(tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        entry = {"path": artifact_file, "type": "table"}
        if entry not in shown:
            self.client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*shown, entry]))

    def _model(
        self, record: RunRecord, op: Mapping[str, Any], problems: list[str] | None = None,
    ) -> tuple[Any, bool]:
        """The LoggedModel of a model entry, completed as far as the store lacks it (see
        :func:`~recvae.tracking.logged_model.ensure_logged_model`); ``(info, changed)``. A model
        that must still be uploaded from a folder gone or replaced since is a problem (with
        ``problems``) or an error."""
        import pandas as pd

        from recvae.tracking.logged_model import ModelSpec, ensure_logged_model, model_of_run

        assert record.run_id is not None
        if model_of_run(self.client, record.run_id, op["name"]) is None:
            problem = self._stale(record, op, key="model_dir")
            if problem is not None:
                if problems is None:
                    raise RecvaeError(problem)
                problems.append(problem)
                return None, False
        spec = ModelSpec(
            name=op["name"], model_dir=record.resolve(op["model_dir"]),
            digest=op.get("digest") or "", k=int(op["k"]), example=pd.DataFrame(op["example"]),
            params=op.get("params") or record.merged("params"), metadata=op.get("metadata") or {},
            metrics=op.get("metrics") or {}, dataset=op.get("dataset"),
            time=int(op.get("time") or record.meta["start_time"]),
            registered_model_name=op.get("registered_model_name"),
        )
        return ensure_logged_model(self.client, self.uri, self.experiment_id(record), record.run_id, spec)

    def _alias(self, record: RunRecord, op: Mapping[str, Any]) -> bool:
        from recvae.tracking.logged_model import ensure_alias

        assert record.run_id is not None
        return ensure_alias(self.client, op["registered_model_name"], op["alias"], record.run_id,
                            op["model"])

    def _status(self, run_id: str, op: Mapping[str, Any]) -> None:
        if op["status"] in TERMINAL:
            self.client.set_terminated(run_id, op["status"], end_time=op["time"])
        else:
            self.client.update_run(run_id, status=op["status"])

    # ------------------------------------------------------------------ comparisons
    @staticmethod
    def _stale(record: RunRecord, op: Mapping[str, Any], key: str = "file") -> str | None:
        """Why a referenced output can no longer be uploaded (gone, or replaced since; the
        record's own files are its to rewrite)."""
        path = record.resolve(op[key])
        if not path.exists():
            return f"{path} no longer exists: not uploaded"
        stamp = op.get("stamp")
        inside = path.resolve().is_relative_to(record.path.resolve())
        if stamp and not inside and file_stamp(path) != stamp:
            return f"{path} was replaced after the run (size or time differ): not uploaded"
        return None


def _lost_insert_race(error: Exception) -> bool:
    """Whether a store error is a database's duplicate-key refusal (PostgreSQL, MySQL, SQLite)."""
    text = str(error).lower()
    return any(s in text for s in ("duplicate key value", "duplicate entry", "unique constraint failed"))


def _journaled_tags(record: RunRecord) -> dict[str, str]:
    """The run's tags as its record has them: those it was created with, then later ones."""
    create = next((op for op in record.ops if op["op"] == "create"), {})
    return {**create.get("tags", {}), **record.merged("tags")}


def _dest(op: Mapping[str, Any]) -> str:
    """Where an artifact entry's file lands in the run."""
    name = Path(op["file"]).name
    return f"{op['artifact_path']}/{name}" if op.get("artifact_path") else name


def _logged_tables(tags: Mapping[str, str]) -> set[str]:
    """The artifacts a run's ``mlflow.loggedArtifacts`` tag names as tables."""
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    try:
        entries = json.loads(tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
    except json.JSONDecodeError:
        return set()
    return {e.get("path") for e in entries if isinstance(e, dict) and e.get("type") == "table"}


def _context(dataset_input: Any) -> str | None:
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    return next((t.value for t in dataset_input.tags if t.key == MLFLOW_DATASET_CONTEXT), None)


# --------------------------------------------------------------------------- recvae sync
@dataclass
class SyncReport:
    """What ``recvae sync`` did, one line per run record."""

    lines: list[str] = field(default_factory=list)
    synced: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0


def close_dead(record: RunRecord) -> str | None:
    """Mark a RUNNING record whose process is gone as KILLED (journaled, with a
    ``recvae.killed_reason`` tag entry); returns the reason, None when the owner may live."""
    if record.status != "RUNNING":
        return None
    reason = record.death()
    if reason is None:
        return None
    record.append({"op": "tags", "tags": {"recvae.killed_reason": reason}})
    record.set_status("KILLED", reason=reason)
    return reason


def _send(
    writer: StoreWriter, record: RunRecord, parent_run_id: str | None, output_dir: str | os.PathLike,
) -> tuple[str, bool, Added]:
    """One record into the store, marked incomplete there until it is complete:
    ``(run_id, created, added)``."""
    run_id, created = writer.open_run(record, parent_run_id)
    writer.mark_incomplete(record, output_dir, "`recvae sync` has not completed it")
    return run_id, created, writer.complete(record)


def sync_output(
    output_dir: str | os.PathLike, *, uri: str | None = None, stream: TextIO | None = None,
    progress: Callable[[str], None] | None = None,
) -> SyncReport:
    """Replay every run record under ``output_dir/tracking`` into its store (or ``uri``).

    Records complete in the store are left alone; records of a process that still runs are
    skipped; records of a dead process are closed as KILLED first. A run is tagged incomplete
    (:meth:`StoreWriter.mark_incomplete`) before its entries are sent and untagged once all
    are, so a sync that stops half-way leaves it marked. A journal whose last line was cut short
    by a kill is synced without that line, with a warning on stderr. Raises RecvaeError when
    there is nothing to sync, a record is damaged (before anything is sent) or the store cannot
    be reached.
    """
    out = stream or sys.stdout
    say = progress or (lambda line: print(line, file=out, flush=True))
    records = list_records(output_dir)
    if not records:
        raise RecvaeError(
            f"{output_dir}: no run records to sync (expected {Path(output_dir) / 'tracking'}/*/run.json)"
        )
    for record in records:
        record.warn_cut()
    report = SyncReport()
    writers: dict[str, StoreWriter] = {}
    broken: set[str] = set()
    run_ids: dict[str, str | None] = {}
    for record in records:
        target = uri or record.meta.get("uri")
        label = f"{record.name} ({record.kind}, {record.path.name})"
        if not target:
            report.skipped += 1
            report.lines.append(f"{label}: no tracking URI recorded; give --tracking-uri")
            say(report.lines[-1])
            continue
        reason = close_dead(record)
        if record.status == "RUNNING":
            report.skipped += 1
            report.lines.append(f"{label}: still running (pid {record.meta.get('pid')}); skipped")
            say(report.lines[-1])
            continue
        if not record.pending and record.meta.get("uri") == target:
            report.unchanged += 1
            run_ids[record.uid] = record.run_id
            continue
        if target in broken:
            report.skipped += 1
            report.lines.append(f"{label}: skipped, {target} failed on an earlier run")
            say(report.lines[-1])
            run_ids[record.uid] = None
            continue
        if target not in writers:
            check_tracking_server(target)
            try:
                writers[target] = bounded_call(target, lambda t=target: StoreWriter(open_store(t), t))
            except outage_errors() as e:
                raise RecvaeError(f"MLflow tracking store {target} failed: {describe_error(e)}") from None
        writer = writers[target]
        parent = record.parent_uid
        if parent is not None and run_ids.get(parent) is None and parent in run_ids:
            report.skipped += 1
            report.lines.append(f"{label}: its parent run could not be synced; skipped")
            say(report.lines[-1])
            run_ids[record.uid] = None
            continue
        send = functools.partial(_send, writer, record, run_ids.get(parent) if parent else None, output_dir)
        try:
            run_id, created, added = bounded_call(target, send)
        except outage_errors() as e:
            report.failed += 1
            broken.add(target)  # every later call would wait out the same timeouts
            run_ids[record.uid] = None
            report.lines.append(f"{label}: FAILED: {describe_error(e)}")
            say(report.lines[-1])
            continue
        added.created = created
        run_ids[record.uid] = run_id
        report.synced += 1
        note = f" (closed as KILLED: {reason})" if reason else ""
        extra = "".join(f"; {p}" for p in added.problems)
        report.lines.append(f"{label}: run {run_id}: {added.describe()}{note}{extra}")
        say(report.lines[-1])
    return report
