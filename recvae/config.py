"""Pipeline configuration: YAML parsed once, at the edge, into typed dataclasses.

Unknown keys and wrong types are errors that name the file and the key. Model
hyper-parameters are checked against the model class's own fields.

Paths: a relative path written in a pipeline file (``data.path``, ``data.out``,
``output_dir``, the file of a ``sqlite:///`` ``tracking.uri``; fields marked with
``metadata={"path": ...}``) is resolved against the folder of that file, so
``recvae run /anywhere/pipelines/x.yaml`` reads and writes the same files from any working
directory. Everything the user types stays relative to the working directory, as for every
other command: ``--set data.path=...`` values and the CLI's own path arguments. So do the
defaults of keys the file does not write (``output_dir: runs``, ``data.out:
runs/data/<name>``, the tracking store ``./mlflow.db`` that ``recvae ui`` opens). The shipped
pipelines write ``../runs/...`` and ``sqlite:///../mlflow.db``: their outputs land in the
repository root whatever the working directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recvae.data.spec import DataConfig, PreprocessConfig, SplitConfig  # noqa: F401 - re-exported
from recvae.errors import RecvaeError
from recvae.search.spec import SearchConfig, check_search_config, model_search, where_of


@dataclass
class ModelConfig:
    """One model of the pipeline: a registry name, an optional run label, hyper-parameters, and
    ``nproc``: the processes that train it data-parallel (torchrun on ``recvae train``; models
    with ``trains_distributed`` only).

    With ``search`` (a mapping of parameter spaces, or ``default``) the model is tuned on
    validation first; ``trials``, ``timeout_minutes``, ``sampler``, ``pruner`` and ``storage``
    override the pipeline's ``search:`` section for this model (see :mod:`recvae.search.spec`).
    Search trials train in one process: ``search`` with ``nproc`` > 1 is refused.
    """

    model: str
    label: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    search: str | dict[str, Any] | None = None
    trials: int | None = None
    timeout_minutes: float | None = None
    sampler: str | dict[str, Any] | None = None
    pruner: str | dict[str, Any] | None = None
    storage: str | None = None
    nproc: int = 1

    @property
    def run_name(self) -> str:
        return self.label or self.model


@dataclass
class EvaluationConfig:
    ks: list[int] = field(default_factory=lambda: [20, 50, 100])
    batch_size: int = 1000
    # test metrics of the final comparison table, e.g. recall_full_at_20 for Gowalla's protocol;
    # null: recall at the two smallest ks and NDCG at the largest (the paper's R@20, R@50, N@100)
    table: list[str] | None = None

    def table_metrics(self) -> list[str]:
        """The metric names of the comparison table."""
        if self.table:
            return list(self.table)
        ks = sorted(set(self.ks))
        return [*(f"recall_at_{k}" for k in ks[:2]), f"ndcg_at_{ks[-1]}"]


@dataclass
class RecommendConfig:
    """The top-k file of each model (see ``recvae.recommend``)."""

    enabled: bool = True
    k: int = 100
    # all: every user of the raw log (with fallback none: the users the model scores)
    users: str | list[Any] = "all"
    format: str = "parquet"  # parquet | csv
    batch_size: int = 2000
    # never recommended: all = every item of the user's raw log, whatever its value; train =
    # what the model was given (held-out targets stay rankable); none
    exclude: str = "all"
    # users the model cannot score (dropped by preprocessing, not in the log): popularity over
    # their unseen items (source = fallback in the file), or none (an error naming them)
    fallback: str = "popularity"


@dataclass
class TrackingConfig:
    # MLFLOW_TRACKING_URI wins; default sqlite:///mlflow.db in the working directory
    uri: str | None = field(default=None, metadata={"path": "uri"})
    experiment: str | None = None  # default: <dataset>/<protocol>
    register: bool = False  # register each model in the MLflow model registry
    log_model: bool = True


@dataclass
class EnsembleConfig:
    """A blend of the pipeline's models, its weights chosen on validation (``recvae.run.ensemble``).

    ``members``: run names of model blocks, or ``all`` (every model that finishes);
    ``weights``: ``search`` (a simplex grid with every member alone among its points) or a
    mapping member → weight (≥ 0, summing to 1); ``normalize``: per-user ``zscore``, ``minmax``
    or ``none``; ``candidates``: items kept per validation user and member for the search."""

    members: str | list[str] = "all"
    normalize: str = "zscore"
    weights: str | dict[str, float] = "search"
    name: str = "ensemble"
    candidates: int = 200


@dataclass
class PipelineConfig:
    """A whole pipeline: data → models → evaluation → top-k files → MLflow."""

    data: DataConfig
    models: list[ModelConfig]
    name: str = "pipeline"
    output_dir: str = field(default="runs", metadata={"path": "file"})
    device: str = "auto"  # passed to models that take a device
    # after model selection on validation, retrain on training + validation interactions (the
    # selected epoch count for models that train in epochs); test metrics, top-k files and the
    # logged model then come from the refitted model
    refit: bool = False
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    search: SearchConfig = field(default_factory=SearchConfig)  # defaults of tuned models
    ensemble: EnsembleConfig | None = None  # a blend of the models, chosen on validation
    source_file: str | None = field(default=None, metadata={"internal": True})


# ------------------------------------------------------------------------- parsing
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``, building nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except RecvaeError as e:
                errors.append(str(e))
        expected = " or ".join(_type_name(a) for a in args)
        raise RecvaeError(f"{where}: expected {expected}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecvaeError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecvaeError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_convert(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecvaeError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecvaeError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecvaeError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecvaeError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise RecvaeError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")


class _File(str):
    """The file name at the root of a key path: its keys follow after ': ' (``FILE: data.path``)."""


def _key(where: str, name: str) -> str:
    return f"{where}: {name}" if isinstance(where, _File) else f"{where}.{name}"


def _build(cls: type, mapping: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = [k for k in mapping if k not in fields]
    if unknown:
        raise RecvaeError(
            f"{where}: unknown key {unknown[0]!r}; expected one of {', '.join(fields)}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in mapping:
            kwargs[name] = _convert(mapping[name], hints[name], _key(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecvaeError(f"{where}: missing required key {name!r}")
    return cls(**kwargs)


def parse_config(raw: dict[str, Any], source: str = "<config>") -> PipelineConfig:
    """Build and validate a :class:`PipelineConfig` from a parsed YAML mapping."""
    if not isinstance(raw, dict):
        raise RecvaeError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    cfg: PipelineConfig = _build(PipelineConfig, raw, _File(source))
    cfg.source_file = source
    validate(cfg, source)
    return cfg


def read_yaml(path: Path, expected: str = "") -> Any:
    """The YAML document in ``path``; invalid YAML is a one-line RecvaeError naming the line."""
    try:
        return yaml.safe_load(path.read_bytes())  # bytes: YAML's reader names a bad byte's position
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line
        hint = f"; expected {expected}" if expected else ""
        raise RecvaeError(f"{path}:{line} invalid YAML ({problem}){hint}") from None


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a pipeline YAML file; ``overrides`` maps dotted keys to values (``data.path``)."""
    p = Path(path)
    if not p.is_file():
        raise RecvaeError(f"{p}: config file not found")
    raw = read_yaml(p)
    if isinstance(raw, dict):  # before the overrides: those are relative to the working directory
        resolve_paths(PipelineConfig, raw, p.resolve().parent)
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value, str(p))
    return parse_config(raw, str(p))


def resolve_paths(cls: type, raw: dict[str, Any], base: Path) -> None:
    """Make the relative paths of ``raw`` (a mapping for the dataclass ``cls``, as read from a
    file in ``base``) absolute against ``base``, in place; values of the wrong type are left for
    the type checks to report."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = raw.get(f.name)
        kind = f.metadata.get("path")
        if kind and isinstance(value, str):
            raw[f.name] = _resolve_uri(value, base) if kind == "uri" else str(_resolve(value, base))
        elif isinstance(value, dict) and (nested := _dataclass_in(hints[f.name])) is not None:
            resolve_paths(nested, value, base)


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p).resolve()  # resolve: no "pipelines/../" in logs


def _resolve_uri(uri: str, base: Path) -> str:
    """A ``sqlite:///relative.db`` URI or a plain relative path made absolute against ``base``;
    other URIs (http, an absolute sqlite file, ...) unchanged."""
    scheme, sep, rest = uri.partition(":")
    if not sep or len(scheme) == 1:  # a plain path (or a Windows drive letter)
        return str(_resolve(uri, base))
    if scheme.lower() == "sqlite" and rest.startswith("///") and rest[3:] not in ("", ":memory:"):
        return f"{scheme}:///{_resolve(rest[3:], base)}"  # absolute: sqlite:////abs/path
    return uri


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass of an annotation (``X`` or ``X | None``), if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _set_dotted(raw: Any, key: str, value: Any, source: str) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node, dict):
            raise RecvaeError(f"{source}: cannot override {key!r}")
        node = node.setdefault(part, {})
    if not isinstance(node, dict):
        raise RecvaeError(f"{source}: cannot override {key!r}: {'.'.join(parts[:-1])} is not a mapping")
    node[parts[-1]] = value


def validate(cfg: PipelineConfig, source: str) -> None:
    """Cross-field checks: known sources, splits and models; model params against the model."""
    from recvae.data.sources import SOURCES
    from recvae.data.split import SPLITS
    from recvae.models import MODEL_NAMES

    if cfg.data.source not in SOURCES:
        raise RecvaeError(
            f"{source}: data.source: unknown source {cfg.data.source!r}; expected one of {', '.join(SOURCES)}"
        )
    if cfg.data.split.method not in SPLITS:
        raise RecvaeError(
            f"{source}: data.split.method: unknown split {cfg.data.split.method!r}; "
            f"expected one of {', '.join(SPLITS)}"
        )
    if not cfg.models:
        raise RecvaeError(f"{source}: models: the list is empty; name at least one model")
    if not cfg.evaluation.ks or any(k <= 0 for k in cfg.evaluation.ks):
        raise RecvaeError(f"{source}: evaluation.ks: expected positive integers, got {cfg.evaluation.ks}")
    from recvae.evaluation import METRICS

    known = [f"{m}_at_{k}" for k in cfg.evaluation.ks for m in METRICS]
    for name in cfg.evaluation.table or []:
        if name not in known:
            raise RecvaeError(
                f"{source}: evaluation.table: {name!r} is not computed; expected one of "
                f"{', '.join(known)} (metric_at_k for k in evaluation.ks)"
            )
    from recvae.data.split import MAX_SEED

    if not 0 <= cfg.data.split.seed <= MAX_SEED:
        raise RecvaeError(
            f"{source}: data.split.seed: expected an integer in [0, {MAX_SEED}], got {cfg.data.split.seed}"
        )
    threshold = cfg.data.preprocess.threshold
    if threshold is not None and not math.isfinite(threshold):
        raise RecvaeError(
            f"{source}: data.preprocess.threshold: expected a finite number or null, got {threshold}"
        )
    for key, value in (("evaluation.batch_size", cfg.evaluation.batch_size),
                       ("recommend.k", cfg.recommend.k),
                       ("recommend.batch_size", cfg.recommend.batch_size)):
        if value < 1:
            raise RecvaeError(f"{source}: {key}: expected a positive integer, got {value}")
    from recvae.recommend import EXCLUDE, FALLBACKS

    for key, value, allowed in (
        ("format", cfg.recommend.format, ("parquet", "csv")),
        ("exclude", cfg.recommend.exclude, EXCLUDE),
        ("fallback", cfg.recommend.fallback, FALLBACKS),
    ):
        if value not in allowed:
            raise RecvaeError(
                f"{source}: recommend.{key}: expected {', '.join(allowed[:-1])} or {allowed[-1]}, "
                f"got {value!r}"
            )
    check_search_config(cfg.search, source)  # checked even where every block overrides it
    validate_ensemble(cfg, source)
    seen: set[str] = set()
    for i, m in enumerate(cfg.models):
        where = f"{source}: models[{i}]"
        if m.model not in MODEL_NAMES:
            raise RecvaeError(
                f"{where}.model: unknown model {m.model!r}; expected one of {', '.join(MODEL_NAMES)}"
            )
        if m.run_name in seen:
            raise RecvaeError(f"{where}: duplicate run name {m.run_name!r}; give each model a distinct label")
        seen.add(m.run_name)
        model = build_model(m, where=where)  # constructs (no training) to validate the params
        if m.nproc < 1:
            raise RecvaeError(f"{where}.nproc: expected a positive integer, got {m.nproc}")
        if m.nproc > 1 and not model.trains_distributed:
            raise RecvaeError(
                f"{where}.nproc: {m.model} does not train data-parallel; remove nproc "
                "(the autoencoders other than recvae do)"
            )
        search = model_search(cfg, m, where=where)  # a bad search: block fails at load (and --dry-run)
        if search is not None:
            if m.nproc > 1:
                raise RecvaeError(
                    f"{where}.nproc: search trials train in one process; remove nproc or search"
                )
            from recvae.search.study import check_search  # Optuna: only for a searched model

            check_search(search, lambda name, m=m, where=where: where_of(m, name, where))


def validate_ensemble(cfg: PipelineConfig, source: str) -> None:
    """The ``ensemble:`` block: known, distinct members (two or more), a known normalization,
    weights ``search`` or one per member (≥ 0, summing to 1), a name no model block has."""
    spec = cfg.ensemble
    if spec is None:
        return
    from recvae.models.ensemble import NORMALIZE, check_weights

    where = f"{source}: ensemble"
    names = [m.run_name for m in cfg.models]
    if spec.members == "all":
        members = names
    elif isinstance(spec.members, str):
        raise RecvaeError(f"{where}.members: expected 'all' or a list of model names, got {spec.members!r}")
    else:
        members = spec.members
        if not members:
            raise RecvaeError(f"{where}.members: the list is empty; name two or more models, or 'all'")
        unknown = [m for m in members if m not in names]
        if unknown:
            raise RecvaeError(f"{where}.members: unknown member {unknown[0]!r}; expected models of "
                              f"this pipeline ({', '.join(names)})")
        if len(set(members)) != len(members):
            raise RecvaeError(f"{where}.members: a member is listed twice")
    if len(members) < 2:
        raise RecvaeError(f"{where}.members: an ensemble of one model ({', '.join(members)}); "
                          "name two or more")
    if spec.normalize not in NORMALIZE:
        raise RecvaeError(f"{where}.normalize: expected {', '.join(NORMALIZE)}, got {spec.normalize!r}")
    if isinstance(spec.weights, str):
        if spec.weights != "search":
            raise RecvaeError(f"{where}.weights: expected 'search' or a mapping member: weight, "
                              f"got {spec.weights!r}")
    else:
        missing = [m for m in members if m not in spec.weights]
        if missing:
            raise RecvaeError(f"{where}.weights: no weight for member {missing[0]!r}")
        check_weights(spec.weights, members, f"{where}.weights")
    if spec.name in names:
        raise RecvaeError(f"{where}.name: {spec.name!r} is a model of this pipeline; name the ensemble "
                          "otherwise")
    floor = max(100, *cfg.evaluation.ks)
    if spec.candidates < floor:
        raise RecvaeError(f"{where}.candidates: expected an integer ≥ {floor} (the largest k and the "
                          f"selection's 100), got {spec.candidates}")


def ensemble_members(cfg: PipelineConfig) -> list[str]:
    """The run names of the ensemble's members (none without an ``ensemble:`` block)."""
    if cfg.ensemble is None:
        return []
    return [m.run_name for m in cfg.models] if cfg.ensemble.members == "all" else list(cfg.ensemble.members)


def select_models(cfg: PipelineConfig, only: Sequence[str] | None) -> list[ModelConfig]:
    """The models of ``cfg`` named in ``only`` (run names, as ``--models`` gives them; the
    ensemble's name is a later stage, not a model block), in the file's order; all of them when
    ``only`` is empty. An unknown name is an error."""
    if not only:
        return list(cfg.models)
    known = [m.run_name for m in cfg.models]
    stages = [cfg.ensemble.name] if cfg.ensemble is not None else []
    missing = [name for name in only if name not in known + stages]
    if missing:
        raise RecvaeError(
            f"--models: {missing[0]!r} is not in {cfg.source_file}; expected one of "
            f"{', '.join(known + stages)}"
        )
    return [m for m in cfg.models if m.run_name in only]


def check_inputs(cfg: PipelineConfig) -> None:
    """Every input the pipeline reads exists (``data.path``, a file or a folder)."""
    path = Path(cfg.data.path)
    if not path.exists():
        raise RecvaeError(
            f"{cfg.source_file or '<config>'}: data.path: {path}: no such file or folder"
        )


def build_model(m: ModelConfig, *, device: str | None = None, where: str = "model") -> Any:
    """Instantiate the model of ``m`` with its params (unknown params are errors)."""
    from recvae.models import create_model, model_class

    fields = {f.name for f in dataclasses.fields(model_class(m.model)) if f.init}
    params = dict(m.params)
    if device is not None and "device" in fields and "device" not in params:
        params["device"] = device
    return create_model(m.model, params, where=f"{where}.params")


def cap_epochs(m: ModelConfig, cap: int | None) -> ModelConfig:
    """``m`` with ``epochs`` and ``iterations`` at most ``cap`` (``--max-epochs``, for smoke
    runs); unchanged when ``cap`` is None or the model trains in neither."""
    if cap is None:
        return m
    from recvae.models import model_class

    fields = {f.name: f for f in dataclasses.fields(model_class(m.model)) if f.init}
    params = dict(m.params)
    for key in ("epochs", "iterations"):
        if key in fields:
            given = params.get(key, fields[key].default)
            whole = isinstance(given, int) and not isinstance(given, bool)
            params[key] = min(given, cap) if whole else cap
    return dataclasses.replace(m, params=params)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (for logging and artifacts)."""
    return dataclasses.asdict(cfg)
