"""Pipeline configuration: YAML parsed once, at the edge, into typed dataclasses.

Unknown keys and wrong types are errors that name the file and the key. Model
hyper-parameters are checked against the model class's own fields.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recvae.data.spec import DataConfig, PreprocessConfig, SplitConfig  # noqa: F401 - re-exported
from recvae.errors import RecvaeError


@dataclass
class ModelConfig:
    """One model of the pipeline: a registry name, an optional run label, hyper-parameters, and
    ``nproc``: the processes that train it data-parallel (torchrun on ``recvae train``; models
    with ``trains_distributed`` only)."""

    model: str
    label: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
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
    enabled: bool = True
    k: int = 100
    users: str | list[Any] = "all"
    format: str = "parquet"  # parquet | csv
    batch_size: int = 2000


@dataclass
class TrackingConfig:
    uri: str | None = None  # MLFLOW_TRACKING_URI wins; default sqlite:///mlflow.db
    experiment: str | None = None  # default: <dataset>/<protocol>
    register: bool = False  # register each model in the MLflow model registry
    log_model: bool = True


@dataclass
class PipelineConfig:
    """A whole pipeline: data → models → evaluation → top-k files → MLflow."""

    data: DataConfig
    models: list[ModelConfig]
    name: str = "pipeline"
    output_dir: str = "runs"
    device: str = "auto"  # passed to models that take a device
    # after model selection on validation, retrain on training + validation interactions (the
    # selected epoch count for models that train in epochs); test metrics, top-k files and the
    # logged model then come from the refitted model
    refit: bool = False
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
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


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read a pipeline YAML file; ``overrides`` maps dotted keys to values (``data.path``)."""
    p = Path(path)
    if not p.is_file():
        raise RecvaeError(f"{p}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise RecvaeError(f"{p}:{line} invalid YAML ({getattr(e, 'problem', e)})") from None
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value, str(p))
    return parse_config(raw, str(p))


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
    if cfg.recommend.format not in ("parquet", "csv"):
        raise RecvaeError(
            f"{source}: recommend.format: expected parquet or csv, got {cfg.recommend.format!r}"
        )
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
                "(the autoencoders do)"
            )


def build_model(m: ModelConfig, *, device: str | None = None, where: str = "model") -> Any:
    """Instantiate the model of ``m`` with its params (unknown params are errors)."""
    from recvae.models import model_class

    cls = model_class(m.model)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in m.params if k not in fields]
    if unknown:
        raise RecvaeError(
            f"{where}.params: unknown parameter {unknown[0]!r} for {m.model}; "
            f"expected one of {', '.join(sorted(fields))}"
        )
    params = dict(m.params)
    if device is not None and "device" in fields and "device" not in params:
        params["device"] = device
    try:
        return cls(**params)
    except RecvaeError as e:
        raise RecvaeError(f"{where}.params: {e}") from None
    except TypeError as e:
        raise RecvaeError(f"{where}.params: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (for logging and artifacts)."""
    return dataclasses.asdict(cfg)
