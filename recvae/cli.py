"""The ``recvae`` command line: ingest, train, evaluate, recommend, run, sync, open the UI.

User errors (bad files, bad values) print one line and exit with status 2, without a traceback
unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from recvae.errors import RecvaeError

EXIT_USAGE = 2
UI_HOST, UI_PORT = "127.0.0.1", 5000


# ---------------------------------------------------------------------------- helpers
def _value(text: str) -> Any:
    """Parse a ``--set`` value as YAML (numbers, booleans, lists, null); plain text stays text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


# ------------------------------------------------------------------ argument types
# Numbers are checked when the command line is parsed, so a bad value is one line before any work.
def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    if maximum is not None:
        expected = f"an integer in [{minimum}, {maximum}]"
    else:
        expected = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = "integer"  # argparse names the type in some messages
    return parse


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _proportion(text: str) -> float:
    value = _finite(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


def _threshold(text: str) -> float | None:
    if text.lower() in ("none", "null"):
        return None
    try:
        return _finite(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a number, or 'none' to keep everything, got {text!r}"
        ) from None


_POSITIVE = _integer(1)
_COUNT = _integer(0)
_SEED = _integer(0, 2**32 - 2)  # as recvae.data.split.MAX_SEED (not imported: it pulls pandas)
_PORT = _integer(1, 65535)


class _UsageError(Exception):
    """A command line argparse rejects: printed as one line like every user error."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's own: usage + message, exit 2
        command = self.prog.removeprefix("recvae").strip()
        hint = f" (see recvae {command} --help)" if command else " (see recvae --help)"
        raise _UsageError(f"{command + ': ' if command else ''}{message}{hint}")


def _pairs(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RecvaeError(f"{flag} {item!r}: expected KEY=VALUE")
        out[key] = _value(value)
    return out


def _print_json_or_table(obj: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(obj, indent=2, default=str))
    else:
        from recvae.run.report import format_summary

        print(format_summary(obj))


# ---------------------------------------------------------------------------- commands
def cmd_ingest(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from recvae.config import load_config
    from recvae.data.ingest import drop_lines, ingest
    from recvae.data.sources import SOURCES
    from recvae.data.spec import DataConfig, PreprocessConfig, SplitConfig

    if args.config:
        data = load_config(args.config, _pairs(args.set, "--set")).data
        if args.path:
            data = replace(data, path=args.path)
        if args.out:
            data = replace(data, out=args.out)
        if args.allow_negative:
            data = replace(data, preprocess=replace(data.preprocess, allow_negative=True))
    else:
        if args.set:
            raise RecvaeError("ingest: --set overrides keys of a --config file; give --config too")
        if not args.source or not args.path:
            raise RecvaeError("ingest: give --config FILE, or --source and --path")
        if args.source not in SOURCES:
            raise RecvaeError(f"--source {args.source!r}: expected one of {', '.join(SOURCES)}")
        data = DataConfig(
            source=args.source,
            path=args.path,
            name=args.name,
            options=_pairs(args.option, "--option"),
            out=args.out,
            preprocess=PreprocessConfig(
                threshold=args.threshold, min_item_users=args.min_item_users,
                min_user_items=args.min_user_items, iterate=args.iterate,
                allow_negative=args.allow_negative,
            ),
            split=SplitConfig(
                method=args.split, n_heldout_users=args.n_heldout_users, test_prop=args.test_prop,
                validation_prop=args.validation_prop, leave_last=args.leave_last,
                cutoff=args.cutoff, seed=args.seed,
            ),
        )
    dataset, reused = ingest(data, force=args.force)
    print(f"{'reused' if reused else 'wrote'} {data.out_dir}")
    for line in drop_lines(dataset.manifest):
        print(line, file=sys.stderr if args.json else sys.stdout)
    _print_json_or_table(dataset.summary(), args.json)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from recvae.data.dataset import Dataset
    from recvae.data.ingest import drop_lines

    ds = Dataset.load(args.dataset, verify=args.verify)
    summary = ds.summary()
    if not args.json:
        print(f"{args.dataset}: {ds.manifest.get('name', '')} ({ds.manifest.get('source', '?')})")
        for line in drop_lines(ds.manifest):
            print(line)
    _print_json_or_table(summary, args.json)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from recvae.data.download import download_movielens

    path = download_movielens(args.name, cache_dir=args.cache_dir)
    print(path)
    return 0


def _model_config(args: argparse.Namespace) -> Any:
    from recvae.config import ModelConfig, read_yaml

    params: dict[str, Any] = {}
    if args.params:
        p = Path(args.params)
        if not p.is_file():
            raise RecvaeError(f"{p}: params file not found")
        loaded = read_yaml(p, "a mapping of hyper-parameters") or {}
        if not isinstance(loaded, dict):
            raise RecvaeError(f"{p}: expected a mapping of hyper-parameters")
        params.update(loaded)
    params.update(_pairs(args.set, "--set"))
    if args.epochs is not None:
        params["epochs"] = args.epochs
    return ModelConfig(model=args.model, label=args.label, params=params)


def cmd_train(args: argparse.Namespace) -> int:
    from recvae import distributed
    from recvae.config import build_model, cap_epochs
    from recvae.data.dataset import Dataset
    from recvae.io import remove_stale
    from recvae.models.base import check_writable
    from recvae.reporting import NullTracker
    from recvae.run.context import Layout, ModelJob, RunContext
    from recvae.run.model import run_model
    from recvae.run.report import results_table

    mc = cap_epochs(_model_config(args), args.max_epochs)
    nproc = args.nproc if args.nproc is not None else 1
    model = build_model(mc, device=args.device, where=f"model {mc.run_name!r}")  # checks the params
    if nproc > 1 or distributed.launched_by_torchrun():
        if not model.trains_distributed:
            raise RecvaeError(f"{mc.model} does not train data-parallel; run it in one process")
    if nproc > 1:
        if distributed.launched_by_torchrun():
            raise RecvaeError("--nproc: this is already one of torchrun's processes; drop --nproc")
        return _exec_torchrun(nproc, args.argv)
    distributed.init_from_env()
    main_process = distributed.is_main()
    out = Path(args.out)
    if main_process:
        remove_stale(out)  # what a killed `recvae train` left beside --out
        check_writable(out, overwrite=args.overwrite)  # now, not after the training
    # checkpoints and the run's tracking record live here until the model is complete
    work = out.parent / f".{out.name}.work"
    tracker = NullTracker()
    if main_process and not args.no_track:
        from recvae.tracking import Tracker

        # fails fast if unreachable; --resume continues the killed process's MLflow run
        tracker = Tracker(args.tracking_uri, args.experiment, output_dir=work, resume=args.resume)
    dataset = Dataset.load(args.data)
    if args.refit:
        dataset = dataset.for_refit()
    tracker.use_dataset(dataset, str(args.data))
    ctx = RunContext(Layout(work, model_out=out), tracker, args.device, tuple(args.k),
                     show_progress=not args.quiet, resume=args.resume, data_dir=Path(args.data))
    job = ModelJob(mc, logged={"data": {"dir": str(args.data), **_logged(dataset.manifest)}})
    try:
        if not main_process:  # the other processes only train, in step with rank 0
            model.fit(dataset, checkpoint_dir=ctx.out.checkpoints(mc.run_name), resume=args.resume)
            return 0
        outcome = run_model(job, dataset, ctx)
    except BaseException:
        # The work folder is kept while it holds a checkpoint for --resume, or a tracking record
        # that `recvae sync` must still send (rank 0 alone writes either).
        if main_process and not _has_checkpoint(work / "checkpoints") and not tracker.not_logged():
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        distributed.shutdown()
    print(f"saved {args.out}")
    print(results_table([outcome], [f"test/{m}" for m in _table_metrics(args.k)]))
    if tracker.not_logged():
        # the record (and the model it references) must outlive this process for `recvae sync`
        print(tracker.offline_summary(), file=sys.stderr)
    else:
        shutil.rmtree(work, ignore_errors=True)
    if outcome.run_id:
        print(f"\nMLflow run:   {outcome.run_id}   (store {tracker.uri})")
        print(f"open it:      {_ui_hint(tracker.uri or '', outcome.experiment_id, outcome.run_id)}")
        if outcome.model_id:
            print(f"model:        models:/{outcome.model_id}   (mlflow models serve -m models:/"
                  f"{outcome.model_id} --env-manager local)")
        print(f"top-k files:  recvae recommend --run-id {outcome.run_id} --data {args.data} "
              "--out runs/recs.parquet")
    return 0


def _logged(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as run params, without the per-file sizes and sha256 (the dataset digest
    tag identifies the data)."""
    return {k: v for k, v in manifest.items() if k != "files"}


def _has_checkpoint(directory: Path) -> bool:
    return directory.is_dir() and any(
        p.is_file() and not p.name.startswith(".") for p in directory.rglob("*")
    )


def _table_metrics(ks: Sequence[int]) -> list[str]:
    from recvae.config import EvaluationConfig

    return EvaluationConfig(ks=list(ks)).table_metrics()


def _ui_hint(uri: str, experiment_id: str | None, run_id: str | None) -> str:
    """How to see a run in the MLflow UI: its URL on a tracking server, else the ``recvae ui``
    command for the store and the URL it will serve."""
    from recvae.tracking import resolve_tracking_uri

    # the run's Overview (a pipeline's: the ranked comparison), in MLflow's model-training view
    page = (f"/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
            if experiment_id and run_id else "")
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/") + page
    command = "recvae ui" if uri == resolve_tracking_uri(None) else f"recvae ui --tracking-uri {uri}"
    return f"{command}   then http://{UI_HOST}:{UI_PORT}{page}"


def _exec_torchrun(nproc: int, argv: Sequence[str]) -> int:
    """Replace this process by torchrun starting ``recvae`` with ``argv`` less ``--nproc``."""
    from recvae import distributed

    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    cmd = [*distributed.torchrun_command(nproc), *rest]
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 1  # not reached


def cmd_evaluate(args: argparse.Namespace) -> int:
    from recvae.data.dataset import Dataset
    from recvae.evaluation import evaluate
    from recvae.models import load_model

    model = load_model(args.model_dir)
    dataset = Dataset.load(args.data)
    model.check_items(dataset.item_ids, what=str(args.data))
    result = evaluate(
        model.score, dataset.part(args.split), args.k, batch_size=args.batch_size, inplace=True
    )
    if args.json:
        print(json.dumps(result.as_metrics(args.split), indent=2))
    else:
        print(f"{model.name} on {args.data} ({args.split}, {result.n_users} users with targets)")
        print(result.table())
    return 0


def _model_from_run(run_id: str, tracking_uri: str | None) -> Path:
    """The recvae model directory inside the LoggedModel of MLflow run ``run_id``, downloaded."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from recvae.pyfunc import MODEL_DIR_ARTIFACT
    from recvae.tracking import resolve_tracking_uri
    from recvae.tracking.logged_model import model_of_run

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(uri)
    try:
        logged = model_of_run(client, run_id)
        if logged is None:
            raise RecvaeError(f"--run-id {run_id}: the run has no logged model (in {uri})")
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=logged.artifact_location, tracking_uri=uri
        )
    except (MlflowException, OSError) as e:
        raise RecvaeError(f"--run-id {run_id}: cannot fetch its model from {uri} ({e})") from None
    found = list(Path(local).rglob("recvae_model.json"))
    if not found:
        raise RecvaeError(f"--run-id {run_id}: the run's model has no {MODEL_DIR_ARTIFACT} directory")
    return found[0].parent


def cmd_recommend(args: argparse.Namespace) -> int:
    from recvae.data.dataset import Dataset
    from recvae.io import remove_stale
    from recvae.models import load_model
    from recvae.recommend import write_recommendations

    if bool(args.model_dir) == bool(args.run_id):
        raise RecvaeError("recommend: give a model directory or --run-id, not both")
    remove_stale(args.out)  # what a killed `recvae recommend` left beside --out
    model_dir = Path(args.model_dir) if args.model_dir else _model_from_run(args.run_id, args.tracking_uri)
    model = load_model(model_dir)
    dataset = Dataset.load(args.data)
    users: Any = "all"
    if args.users != "all":
        p = Path(args.users)
        if p.is_file():
            try:
                text = p.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError as e:
                raise RecvaeError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); expected "
                                  "one user id per line") from None
            users = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            users = [u for u in args.users.split(",") if u]
    topk = write_recommendations(
        model, dataset, args.out, k=args.k, users=users, exclude=args.exclude,
        fallback=args.fallback, format=args.format, batch_size=args.batch_size,
        show_progress=not args.quiet,
    )
    print(f"wrote {topk.path}: {topk.describe()}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from recvae.config import cap_epochs, check_inputs, load_config, select_models
    from recvae.run.pipeline import run_pipeline
    from recvae.run.report import results_table

    cfg = load_config(args.config, _pairs(args.set, "--set"))  # builds every model: checks params
    only = [m for m in args.models.split(",") if m] if args.models else None
    names = [m.run_name for m in select_models(cfg, only)]
    check_inputs(cfg)
    if not args.no_track:  # as the run does first: an unreachable store fails now
        from recvae.tracking import check_tracking_server, resolve_tracking_uri

        check_tracking_server(resolve_tracking_uri(cfg.tracking.uri))
    if args.dry_run:
        print(f"{args.config}: valid; data {cfg.data.path}; dataset {cfg.data.dataset_name} → "
              f"{cfg.data.out_dir}; outputs {cfg.output_dir}; models: {', '.join(names)}")
        return 0
    cfg = replace(cfg, models=[cap_epochs(m, args.max_epochs) for m in cfg.models])
    from recvae.io import sweep_stale

    sweep_stale(cfg.output_dir)  # what a killed run left in its output folders
    outcomes = run_pipeline(cfg, only=only, track=not args.no_track, show_progress=not args.quiet,
                            force_ingest=args.force_ingest, resume=args.resume)
    print()
    print(results_table(outcomes, [f"test/{m}" for m in cfg.evaluation.table_metrics()]))
    print("(recall_at_k = hits / min(k, |held-out|), Liang et al.; recall_full_at_k = hits / "
          "|held-out| is logged too)")
    print(f"\nmodels:          {Path(cfg.output_dir) / 'models'}")
    if cfg.recommend.enabled:
        print(f"recommendations: {Path(cfg.output_dir) / 'recommendations'}")
    if not args.no_track:
        from recvae.tracking import resolve_tracking_uri

        uri = resolve_tracking_uri(cfg.tracking.uri)
        tracked = [o for o in outcomes if o.run_id]
        print(f"MLflow store:    {uri}")
        if tracked:
            first = tracked[0]
            print(f"MLflow runs:     pipeline {first.parent_run_id}; "
                  + ", ".join(f"{o.run_name} {o.run_id}" for o in tracked))
            print(f"open it:         {_ui_hint(uri, first.experiment_id, first.parent_run_id)}")
    failed = [o for o in outcomes if not o.ok]
    if failed:
        print(f"\n{len(failed)} model(s) failed: " + "; ".join(f"{o.run_name}: {o.error}" for o in failed),
              file=sys.stderr)
        return 1
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from recvae.tracking.sync import sync_output

    report = sync_output(args.output_dir, uri=args.tracking_uri)
    print(f"{args.output_dir}: {report.synced} run(s) synced, {report.unchanged} already complete, "
          f"{report.skipped} skipped, {report.failed} failed")
    return 1 if report.failed else 0


def ui_store_uri(arg: str | None) -> str:
    """The store ``recvae ui`` serves, by ``recvae.tracking.resolve_tracking_uri``'s rule
    (``MLFLOW_TRACKING_URI``, else ``arg``, else ``./mlflow.db``; a test keeps them equal).

    Resolved here because importing ``recvae.tracking`` imports MLflow, seconds of start-up
    that this process, which only hands over to MLflow's server, would spend for nothing.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return env or arg or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def cmd_ui(args: argparse.Namespace) -> int:
    uri = ui_store_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise RecvaeError(f"the tracking store {uri} is a server already: open it in a browser")
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).expanduser().parent.is_dir():
        raise RecvaeError(f"MLflow tracking database {uri}: its directory does not exist")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port), "--workers", str(args.workers)]
    # The UI needs the tracking server only: not MLflow's GenAI job runners (a huey consumer per
    # job type, started by default), nor 4 uvicorn workers for one person's browser.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri} (Ctrl-C stops it)", flush=True)
    if os.name == "posix":
        # become the server: signals (Ctrl-C, SIGTERM) reach it, and it stops what it started
        sys.stdout.flush()
        os.execve(sys.executable, cmd, env)
    return subprocess.call(cmd, env=env)  # pragma: no cover - Windows


# ---------------------------------------------------------------------------- parser
class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS) or action.help is None:
            return action.help
        return super()._get_help_string(action)


def _default(cls: type, name: str) -> Any:
    """A config dataclass field's default: the CLI's defaults are the config's, stated once."""
    import dataclasses

    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def build_parser() -> argparse.ArgumentParser:
    from recvae import __version__
    from recvae.config import EvaluationConfig as Ev
    from recvae.config import RecommendConfig as Rec
    from recvae.data.spec import PreprocessConfig as Pre
    from recvae.data.spec import SplitConfig as Split

    p = _Parser(
        prog="recvae", formatter_class=_HelpFormatter,
        description="Collaborative filtering with autoencoders: ingest a log, train and evaluate "
                    "models, write top-k files, run a pipeline, open the MLflow UI.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=_HelpFormatter)

    s = command("ingest", "read a raw log, preprocess, split, save a dataset")
    s.add_argument("--config", help="a pipeline YAML: its data section is used")
    s.add_argument("--source", help="movielens | netflix | msd | lightgcn | citeulike | table")
    s.add_argument("--path", help="the raw file, folder or zip")
    s.add_argument("--out", help="dataset directory (default runs/data/<name>)")
    s.add_argument("--name", help="dataset name (default: from the path)")
    s.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="reader option, e.g. user_col=customer (table source)")
    s.add_argument("--threshold", type=_threshold, default=_default(Pre, "threshold"),
                   help="keep value > threshold; 'none' keeps all")
    s.add_argument("--allow-negative", action="store_true",
                   help="with --threshold none, keep negative values as positives too")
    s.add_argument("--min-item-users", type=_COUNT, default=_default(Pre, "min_item_users"),
                   help="drop items with fewer users first")
    s.add_argument("--min-user-items", type=_COUNT, default=_default(Pre, "min_user_items"),
                   help="then drop users with fewer (positive) items")
    s.add_argument("--iterate", action="store_true", help="iterate the filters to a k-core")
    s.add_argument("--split", default=_default(Split, "method"),
                   help="strong | random | temporal | predefined")
    s.add_argument("--n-heldout-users", type=_POSITIVE,
                   help="strong: users per held-out part (default 10 %% of users, at most 10,000)")
    s.add_argument("--test-prop", type=_proportion, default=_default(Split, "test_prop"),
                   help="strong: held-out share of each evaluation user; random: test share")
    s.add_argument("--validation-prop", type=_proportion, default=_default(Split, "validation_prop"),
                   help="weak splits: validation share carved from each user's training rows")
    s.add_argument("--leave-last", type=_POSITIVE, help="temporal: each user's last N interactions are tests")
    s.add_argument("--cutoff", type=_finite, help="temporal: interactions at or after (epoch seconds)")
    s.add_argument("--seed", type=_SEED, default=_default(Split, "seed"),
                   help="seed of the split (the paper's)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key of the --config file, e.g. data.split.seed=1")
    s.add_argument("--force", action="store_true", help="rebuild even if a matching dataset exists")
    s.add_argument("--json", action="store_true", help="print the counts as JSON")
    s.set_defaults(func=cmd_ingest)

    for name in ("evaluate-split", "summary"):
        s = command(name, "print a dataset's counts per part (Table 1 of the paper)")
        s.add_argument("dataset", help="dataset directory from `recvae ingest`")
        s.add_argument("--json", action="store_true", help="print the counts as JSON")
        s.add_argument("--verify", action="store_true",
                       help="re-hash every file against the manifest's sha256 (sizes are always checked)")
        s.set_defaults(func=cmd_summary)

    s = command("download", "download an official MovieLens archive into data/raw/")
    s.add_argument("name", help="ml-100k | ml-1m | ml-10m | ml-20m | ml-25m | ml-32m | ml-latest(-small)")
    s.add_argument("--cache-dir", default="data/raw", help="where archives are kept and reused")
    s.set_defaults(func=cmd_download)

    s = command("train", "train one model on a dataset, evaluate it, save it")
    s.add_argument("--data", required=True, help="dataset directory from `recvae ingest`")
    s.add_argument("--model", required=True, help="mult-vae | mult-dae | ease | als | bpr | item-knn | ...")
    s.add_argument("--out", required=True, help="model directory to write")
    s.add_argument("--label", help="run name (default: the model name)")
    s.add_argument("--params", help="YAML file of hyper-parameters")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="a hyper-parameter, e.g. lr=1e-3")
    s.add_argument("--epochs", type=_POSITIVE, help="epochs, for models that train in epochs")
    s.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the model's, auto)")
    s.add_argument("--k", type=_POSITIVE, nargs="+", default=_default(Ev, "ks"),
                   help="cut-offs of the metrics")
    s.add_argument("--max-epochs", type=_POSITIVE, metavar="N",
                   help="cap epochs (and iterations) at N, whatever --epochs or --set say: a smoke run")
    s.add_argument("--overwrite", action="store_true", help="replace the model folder --out if it exists")
    s.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    s.add_argument("--nproc", type=_POSITIVE, metavar="N",
                   help="train data-parallel in N processes (runs torchrun; GPUs: one each)")
    s.add_argument("--refit", action="store_true",
                   help="train on training + validation interactions (no validation, no selection)")
    s.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    s.add_argument("--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    s.add_argument("--experiment", help="MLflow experiment (default: <dataset> (<split>))")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_train)

    s = command("evaluate", "evaluate a saved model on a dataset part")
    s.add_argument("model_dir", help="model directory from `recvae train` or a pipeline")
    s.add_argument("--data", required=True, help="dataset directory from `recvae ingest`")
    s.add_argument("--split", default="test", choices=["validation", "test"], help="the part")
    s.add_argument("--k", type=_POSITIVE, nargs="+", default=_default(Ev, "ks"),
                   help="cut-offs of the metrics")
    s.add_argument("--batch-size", type=_POSITIVE, default=_default(Ev, "batch_size"),
                   help="users scored at a time")
    s.add_argument("--json", action="store_true", help="print the metrics as JSON")
    s.set_defaults(func=cmd_evaluate)

    s = command("recommend", "write top-k recommendations with original ids")
    s.add_argument("model_dir", nargs="?", help="model directory (or give --run-id)")
    s.add_argument("--run-id", help="take the model logged by this MLflow run")
    s.add_argument("--tracking-uri", help="MLflow store of --run-id (default: MLFLOW_TRACKING_URI, "
                   "else ./mlflow.db)")
    s.add_argument("--data", required=True, help="dataset directory (user histories, id maps)")
    s.add_argument("--users", default=_default(Rec, "users"),
                   help="all (every user of the raw log; with --fallback none, the users the model "
                        "scores) | comma-separated ids | a file of ids, one a line")
    s.add_argument("--k", type=_POSITIVE, default=_default(Rec, "k"), help="items per user")
    s.add_argument("--exclude", default=_default(Rec, "exclude"), choices=["all", "train", "none"],
                   help="never recommend: all = every item of the user's raw log, whatever its "
                        "rating; train = what the model was given (held-out items stay rankable, "
                        "for offline checks); none")
    s.add_argument("--fallback", default=_default(Rec, "fallback"), choices=["popularity", "none"],
                   help="users the model cannot score (dropped by preprocessing, not in the log): "
                        "popularity over their unseen items, marked source=fallback; none: an error")
    s.add_argument("--out", required=True, help="output .parquet or .csv")
    s.add_argument("--format", choices=["parquet", "csv"], help="default: from --out's suffix")
    s.add_argument("--batch-size", type=_POSITIVE, default=_default(Rec, "batch_size"),
                   help="users scored at a time")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_recommend)

    s = command("run", "run a pipeline YAML end to end")
    s.add_argument("config", help="pipeline YAML; relative paths in it are relative to its folder")
    s.add_argument("--models", help="comma-separated subset of the config's models")
    s.add_argument("--dry-run", action="store_true",
                   help="check the config, its input files, --models and every model's parameters; "
                        "train nothing")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. data.path=/data/gowalla (paths: relative to "
                        "the working directory)")
    s.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    s.add_argument("--force-ingest", action="store_true", help="rebuild the dataset even if cached")
    s.add_argument("--resume", action="store_true",
                   help="continue the last pipeline run of output_dir if it did not finish (models that "
                        "train in epochs from their checkpoints); else start a new one")
    s.add_argument("--max-epochs", type=_POSITIVE, metavar="N",
                   help="cap every model's epochs (and iterations) at N: a smoke run of the pipeline")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_run)

    s = command("sync", "send the runs an outage kept in OUTPUT_DIR/tracking to the MLflow store")
    s.add_argument("output_dir", help="a pipeline's output_dir (or a `recvae train` work folder)")
    s.add_argument("--tracking-uri", help="another store than the one each run was meant for")
    s.set_defaults(func=cmd_sync)

    s = command("ui", "start the MLflow UI on the tracking store")
    s.add_argument("--tracking-uri", help="the store (default: MLFLOW_TRACKING_URI, else ./mlflow.db)")
    s.add_argument("--host", default=UI_HOST, help="address to listen on")
    s.add_argument("--port", type=_PORT, default=UI_PORT, help="port to listen on")
    s.add_argument("--workers", type=_POSITIVE, default=1, help="uvicorn worker processes")
    s.set_defaults(func=cmd_ui)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recvae`` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as e:
        print(f"recvae: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for `train --nproc`
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(message)s"
    )
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # recvae prints run ids and links
    if not args.debug:
        # urllib3 warns on every retry of a failing tracking call; recvae warns once instead
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        # MLflow's own chatter (pickling notices, schema hints, download bars) buries the
        # per-epoch lines users read; --debug shows it.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        warnings.filterwarnings("ignore", message=".*Inferred schema contains integer", category=UserWarning)
    try:
        return int(args.func(args) or 0)
    except RecvaeError as e:
        if args.debug:
            raise
        # one line whatever a library put in the message (its own line breaks, a path's tab)
        print(f"recvae: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("recvae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
