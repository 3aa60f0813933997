"""The ``recvae`` command line: ingest, train, evaluate, recommend, run a pipeline, open the UI.

User errors (bad files, bad values) print one line and exit with status 2, without a traceback
unless ``--debug`` is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from recvae.errors import RecvaeError

EXIT_USAGE = 2


# ---------------------------------------------------------------------------- helpers
def _value(text: str) -> Any:
    """Parse a ``--set`` value as YAML (numbers, booleans, lists, null); plain text stays text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _number(text: str, flag: str = "--threshold") -> float:
    try:
        return float(text)
    except ValueError:
        raise RecvaeError(f"{flag} {text!r}: expected a number, or 'none' to keep everything") from None


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
        from recvae.pipeline import format_summary

        print(format_summary(obj))


# ---------------------------------------------------------------------------- commands
def cmd_ingest(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from recvae.config import load_config
    from recvae.data.ingest import ingest
    from recvae.data.sources import SOURCES
    from recvae.data.spec import DataConfig, PreprocessConfig, SplitConfig

    if args.config:
        data = load_config(args.config, _pairs(args.set, "--set")).data
        if args.path:
            data = replace(data, path=args.path)
        if args.out:
            data = replace(data, out=args.out)
    else:
        if args.set:
            raise RecvaeError("ingest: --set overrides keys of a --config file; give --config too")
        if not args.source or not args.path:
            raise RecvaeError("ingest: give --config FILE, or --source and --path")
        if args.source not in SOURCES:
            raise RecvaeError(f"--source {args.source!r}: expected one of {', '.join(SOURCES)}")
        threshold = None if str(args.threshold).lower() in ("none", "null") else _number(args.threshold)
        data = DataConfig(
            source=args.source,
            path=args.path,
            name=args.name,
            options=_pairs(args.option, "--option"),
            out=args.out,
            preprocess=PreprocessConfig(
                threshold=threshold, min_item_users=args.min_item_users,
                min_user_items=args.min_user_items, iterate=args.iterate,
            ),
            split=SplitConfig(
                method=args.split, n_heldout_users=args.n_heldout_users, test_prop=args.test_prop,
                validation_prop=args.validation_prop, leave_last=args.leave_last,
                cutoff=args.cutoff, seed=args.seed,
            ),
        )
    dataset, reused = ingest(data, force=args.force)
    print(f"{'reused' if reused else 'wrote'} {data.out_dir}")
    _print_json_or_table(dataset.summary(), args.json)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from recvae.data.dataset import Dataset

    ds = Dataset.load(args.dataset)
    summary = ds.summary()
    if not args.json:
        print(f"{args.dataset}: {ds.manifest.get('name', '')} ({ds.manifest.get('source', '?')})")
    _print_json_or_table(summary, args.json)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from recvae.data.download import download_movielens

    path = download_movielens(args.name, cache_dir=args.cache_dir)
    print(path)
    return 0


def _model_config(args: argparse.Namespace) -> Any:
    from recvae.config import ModelConfig

    params: dict[str, Any] = {}
    if args.params:
        p = Path(args.params)
        if not p.is_file():
            raise RecvaeError(f"{p}: params file not found")
        loaded = yaml.safe_load(p.read_text()) or {}
        if not isinstance(loaded, dict):
            raise RecvaeError(f"{p}: expected a mapping of hyper-parameters")
        params.update(loaded)
    params.update(_pairs(args.set, "--set"))
    if args.epochs is not None:
        params["epochs"] = args.epochs
    return ModelConfig(model=args.model, label=args.label, params=params)


def cmd_train(args: argparse.Namespace) -> int:
    import shutil

    from recvae import distributed
    from recvae.config import RecommendConfig, build_model
    from recvae.data.dataset import Dataset
    from recvae.pipeline import results_table, train_and_evaluate

    mc = _model_config(args)
    nproc = args.nproc if args.nproc is not None else 1
    if nproc < 1:
        raise RecvaeError(f"--nproc {args.nproc}: expected a positive number of processes")
    if nproc > 1 or distributed.launched_by_torchrun():
        model = build_model(mc, device=args.device, where=f"model {mc.run_name!r}")
        if not model.trains_distributed:
            raise RecvaeError(f"{mc.model} does not train data-parallel; run it in one process")
    if nproc > 1:
        if distributed.launched_by_torchrun():
            raise RecvaeError("--nproc: this is already one of torchrun's processes; drop --nproc")
        return _exec_torchrun(nproc, args.argv)
    distributed.init_from_env()
    dataset = Dataset.load(args.data)
    if args.refit:
        dataset = dataset.for_refit()
    work = Path(args.out).parent / f".{Path(args.out).name}.work"
    try:
        if not distributed.is_main():  # the other processes only train, in step with rank 0
            model = build_model(mc, device=args.device, where=f"model {mc.run_name!r}")
            model.fit(dataset, checkpoint_dir=work / "checkpoints" / mc.run_name, resume=args.resume)
            return 0
        tracker = None
        if not args.no_track:
            from recvae.tracking import Tracker

            tracker = Tracker(args.tracking_uri, args.experiment)  # fails fast if unreachable
            tracker.dataset, tracker.dataset_source = dataset, str(args.data)
        outcome = train_and_evaluate(
            mc, dataset, output_dir=work, device=args.device, ks=args.k, eval_batch_size=1000,
            recommend=RecommendConfig(enabled=False), tracker=tracker, show_progress=not args.quiet,
            resume=args.resume, config={"data": {"dir": str(args.data), **dataset.manifest}},
        )
    finally:
        distributed.shutdown()
    # the model directory is complete: move it to --out (atomically replacing an old one)
    from recvae.io import atomic_dir

    with atomic_dir(args.out) as tmp:
        shutil.rmtree(tmp)
        shutil.copytree(outcome.model_dir, tmp)
    shutil.rmtree(work, ignore_errors=True)
    print(f"saved {args.out}")
    print(results_table([outcome]))
    return 0


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
    import mlflow

    from recvae.pyfunc import MODEL_DIR_ARTIFACT
    from recvae.tracking import resolve_tracking_uri

    mlflow.set_tracking_uri(resolve_tracking_uri(tracking_uri))
    try:
        local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model")
    except Exception as e:  # MLflow raises several types for a missing run or artifact
        raise RecvaeError(f"--run-id {run_id}: cannot fetch its model artifact ({e})") from None
    found = list(Path(local).rglob("recvae_model.json"))
    if not found:
        raise RecvaeError(f"--run-id {run_id}: the run's model has no {MODEL_DIR_ARTIFACT} directory")
    return found[0].parent


def cmd_recommend(args: argparse.Namespace) -> int:
    from recvae.data.dataset import Dataset
    from recvae.models import load_model
    from recvae.recommend import write_recommendations

    if bool(args.model_dir) == bool(args.run_id):
        raise RecvaeError("recommend: give a model directory or --run-id, not both")
    model_dir = Path(args.model_dir) if args.model_dir else _model_from_run(args.run_id, args.tracking_uri)
    model = load_model(model_dir)
    dataset = Dataset.load(args.data)
    users: Any = "all"
    if args.users != "all":
        p = Path(args.users)
        if p.is_file():
            users = [line.strip() for line in p.read_text().splitlines() if line.strip()]
        else:
            users = [u for u in args.users.split(",") if u]
    path = write_recommendations(
        model, dataset, args.out, k=args.k, users=users, format=args.format,
        batch_size=args.batch_size, show_progress=not args.quiet,
    )
    print(f"wrote {path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from recvae.config import load_config
    from recvae.pipeline import results_table, run_pipeline
    from recvae.tracking import resolve_tracking_uri

    cfg = load_config(args.config, _pairs(args.set, "--set"))
    only = [m for m in args.models.split(",") if m] if args.models else None
    if args.dry_run:
        names = [m.run_name for m in cfg.models if not only or m.run_name in only]
        print(f"{args.config}: valid; dataset {cfg.data.dataset_name} → {cfg.data.out_dir}; "
              f"models: {', '.join(names)}")
        return 0
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
        uri = resolve_tracking_uri(cfg.tracking.uri)
        print(f"MLflow store:    {uri}   (open it with: recvae ui)")
    failed = [o for o in outcomes if not o.ok]
    if failed:
        print(f"\n{len(failed)} model(s) failed: " + "; ".join(f"{o.run_name}: {o.error}" for o in failed),
              file=sys.stderr)
        return 1
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from recvae.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port)]
    print(f"MLflow UI on http://{args.host}:{args.port} for {uri}", flush=True)
    return subprocess.call(cmd)


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recvae", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("ingest", help="read a raw log, preprocess, split, save a dataset")
    s.add_argument("--config", help="a pipeline YAML: its data section is used")
    s.add_argument("--source", help="movielens | netflix | msd | lightgcn | citeulike | table")
    s.add_argument("--path", help="the raw file, folder or zip")
    s.add_argument("--out", help="dataset directory (default runs/data/<name>)")
    s.add_argument("--name", help="dataset name (default: from the path)")
    s.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="reader option, e.g. user_col=customer (table source)")
    s.add_argument("--threshold", default="3.5", help="keep value > threshold; 'none' keeps all")
    s.add_argument("--min-item-users", type=int, default=0)
    s.add_argument("--min-user-items", type=int, default=5)
    s.add_argument("--iterate", action="store_true", help="iterate the filters to a k-core")
    s.add_argument("--split", default="strong", help="strong | random | temporal | predefined")
    s.add_argument("--n-heldout-users", type=int, help="strong: users per held-out part")
    s.add_argument("--test-prop", type=float, default=0.2)
    s.add_argument("--validation-prop", type=float, default=0.1)
    s.add_argument("--leave-last", type=int)
    s.add_argument("--cutoff", type=float)
    s.add_argument("--seed", type=int, default=98765)
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    s.add_argument("--force", action="store_true", help="rebuild even if a matching dataset exists")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_ingest)

    for name in ("evaluate-split", "summary"):
        s = sub.add_parser(name, help="print a dataset's counts per part (Table 1 of the paper)")
        s.add_argument("dataset")
        s.add_argument("--json", action="store_true")
        s.set_defaults(func=cmd_summary)

    s = sub.add_parser("download", help="download an official MovieLens archive into data/raw/")
    s.add_argument("name", help="ml-100k | ml-1m | ml-10m | ml-20m | ml-25m | ml-32m | ml-latest(-small)")
    s.add_argument("--cache-dir", default="data/raw")
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("train", help="train one model on a dataset, evaluate it, save it")
    s.add_argument("--data", required=True, help="dataset directory from `recvae ingest`")
    s.add_argument("--model", required=True, help="mult-vae | mult-dae | ease | als | bpr | item-knn | ...")
    s.add_argument("--out", required=True, help="model directory to write")
    s.add_argument("--label", help="run name (default: the model name)")
    s.add_argument("--params", help="YAML file of hyper-parameters")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="a hyper-parameter, e.g. lr=1e-3")
    s.add_argument("--epochs", type=int)
    s.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N")
    s.add_argument("--k", type=int, nargs="+", default=[20, 50, 100])
    s.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    s.add_argument("--nproc", type=int, metavar="N",
                   help="train data-parallel in N processes (runs torchrun; GPUs: one each)")
    s.add_argument("--refit", action="store_true",
                   help="train on training + validation interactions (no validation, no selection)")
    s.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    s.add_argument("--tracking-uri")
    s.add_argument("--experiment")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="evaluate a saved model on a dataset part")
    s.add_argument("model_dir")
    s.add_argument("--data", required=True)
    s.add_argument("--split", default="test", choices=["validation", "test"])
    s.add_argument("--k", type=int, nargs="+", default=[20, 50, 100])
    s.add_argument("--batch-size", type=int, default=1000)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("recommend", help="write top-k recommendations with original ids")
    s.add_argument("model_dir", nargs="?")
    s.add_argument("--run-id", help="take the model logged by this MLflow run")
    s.add_argument("--tracking-uri")
    s.add_argument("--data", required=True, help="dataset directory (user histories, id maps)")
    s.add_argument("--users", default="all", help="all | comma-separated ids | a file of ids")
    s.add_argument("--k", type=int, default=100)
    s.add_argument("--out", required=True, help="output .parquet or .csv")
    s.add_argument("--format", choices=["parquet", "csv"])
    s.add_argument("--batch-size", type=int, default=2000)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_recommend)

    s = sub.add_parser("run", help="run a pipeline YAML end to end")
    s.add_argument("config")
    s.add_argument("--models", help="comma-separated subset of the config's models")
    s.add_argument("--dry-run", action="store_true", help="validate the config and stop")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. data.path=/data/gowalla")
    s.add_argument("--no-track", action="store_true")
    s.add_argument("--force-ingest", action="store_true")
    s.add_argument("--resume", action="store_true",
                   help="models that train in epochs continue from their checkpoints")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("ui", help="open the MLflow UI on the tracking store")
    s.add_argument("--tracking-uri")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5000)
    s.set_defaults(func=cmd_ui)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``recvae`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for `train --nproc`
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(message)s"
    )
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.debug:
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
        print(f"recvae: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("recvae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
