"""A model block's ``search:`` as typed values, checked when the config is loaded.

A model block of a pipeline may carry::

    - model: mult-vae
      params: {epochs: 100, patience: 10}     # fixed values; searched keys override them
      search:                                 # or: search: default (recvae.search.spaces)
        lr: {low: 1.0e-4, high: 1.0e-2, log: true}
        hidden_dims: {choices: [[], [600]]}
        latent_dim: {low: 100, high: 300, step: 50}
      trials: 30                              # these four default to the pipeline's search:
      timeout_minutes: 120
      sampler: tpe                            # or {name: tpe, n_startup_trials: 5}
      pruner: median                          # or {name: median, n_warmup_steps: 5}

Nothing here imports Optuna: a bad spec (low > high, an unknown parameter, empty choices, a
trial count below 1, an unknown sampler or pruner, log with low ≤ 0) fails at load, so
``recvae run --dry-run`` catches it, with one line naming the file and the key
(``FILE: models[2].search.lr: ...``). Each bound and choice is also tried on the model's own
constructor, so a value the model would refuse (dropout 1.0) fails here, not in trial 17.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from recvae.errors import RecvaeError
from recvae.models.params import is_int, is_real

SCALARS = (str, int, float, bool, type(None))
#: what a search maximizes, and the column beside the test metrics in the results table
SELECTION_METRIC = "val/ndcg_at_100"

#: sampler name → the options it takes (passed to Optuna's class; ``seed`` is ours)
SAMPLERS: dict[str, tuple[str, ...]] = {
    "tpe": ("n_startup_trials", "n_ei_candidates", "multivariate", "group", "constant_liar",
            "consider_endpoints", "prior_weight"),
    "random": (),
    "grid": (),  # every point of a finite space once (choices, int ranges, float ranges with step)
}
#: pruner name → the options it takes; fed by each epoch's val/ndcg_at_100
PRUNERS: dict[str, tuple[str, ...]] = {
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "percentile": ("percentile", "n_startup_trials", "n_warmup_steps", "interval_steps",
                   "n_min_trials"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor", "bootstrap_count"),
    "threshold": ("lower", "upper", "n_warmup_steps", "interval_steps"),
    "none": (),
}
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "mariadb", "oracle", "mssql")


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class FloatRange:
    """A real parameter in [low, high], log-uniform with ``log``, on a grid with ``step``."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def grid(self) -> list[float] | None:
        if self.step is None:
            return None
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        return [self.low + i * self.step for i in range(n + 1)]

    def bounds(self) -> list[float]:
        return [self.low, self.high]

    def describe(self) -> str:
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "") + (
            f" step {self.step:g}" if self.step is not None else ""
        )


@dataclass(frozen=True)
class IntRange:
    """An integer parameter in [low, high] with ``step``, log-uniform with ``log``."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def grid(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def bounds(self) -> list[int]:
        return [self.low, self.high]

    def describe(self) -> str:
        return f"{{{self.low}..{self.high}}}" + (" log" if self.log else "") + (
            f" step {self.step}" if self.step != 1 else ""
        )


@dataclass(frozen=True)
class Choice:
    """One of ``values``. Lists and mappings (``hidden_dims``) are not Optuna categories, so
    then every value travels as its JSON text (``"[600]"``, readable in Optuna's dashboard)
    and :meth:`decode` turns the sampled text back into the value."""

    values: tuple[Any, ...]

    @property
    def encoded(self) -> bool:
        return any(not isinstance(v, SCALARS) for v in self.values)

    def categories(self) -> list[Any]:
        return [json.dumps(v) for v in self.values] if self.encoded else list(self.values)

    def decode(self, sampled: Any) -> Any:
        return json.loads(sampled) if self.encoded else sampled

    def grid(self) -> list[Any]:
        return self.categories()

    def bounds(self) -> list[Any]:
        return list(self.values)

    def describe(self) -> str:
        return "{" + ", ".join(json.dumps(v) for v in self.values) + "}"


Param = FloatRange | IntRange | Choice


@dataclass(frozen=True)
class Named:
    """A sampler or pruner: its name and the options given to its Optuna class."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.name}({opts})" if opts else self.name


@dataclass
class SearchConfig:
    """The pipeline's ``search:`` section: defaults for every model block with a ``search:``.

    ``storage`` is an SQLAlchemy URL (``postgresql://user@host/db``, ``mysql://...``) shared by
    every process that runs trials of the same study; null: ``sqlite:///<output_dir>/optuna.db``.
    ``seed`` seeds the sampler (trial n draws from ``(seed, n)``, so processes sharing a study
    never draw the same random trials).
    """

    trials: int = 20
    timeout_minutes: float | None = None
    sampler: str | dict[str, Any] = "tpe"
    pruner: str | dict[str, Any] = "median"
    # a URI path: a relative sqlite:/// file resolves like the pipeline file's other paths
    storage: str | None = field(default=None, metadata={"path": "uri"})
    seed: int = 98765


@dataclass
class SearchSpec:
    """What to search for one model: the space and how, resolved and checked."""

    space: dict[str, Param]
    trials: int
    timeout_minutes: float | None
    sampler: Named
    pruner: Named
    storage: str | None
    seed: int
    default_space: bool = False  # ``search: default``

    def describe(self) -> dict[str, str]:
        """The space as ``{param: "[1e-4, 0.01] log"}`` (for params and printing)."""
        return {name: p.describe() for name, p in self.space.items()}


# --------------------------------------------------------------------------- parsing
def model_search(cfg: Any, m: Any, *, where: str | None = None) -> SearchSpec | None:
    """The checked search of the model block ``m`` of the pipeline ``cfg`` (a
    :class:`recvae.config.PipelineConfig`), or None when the block has no ``search:``."""
    if where is None:
        where = f"{cfg.source_file}: models[{cfg.models.index(m)}]"
    return resolve_search(m, cfg.search, where)


def resolve_search(m: Any, defaults: SearchConfig, where: str) -> SearchSpec | None:
    """The :class:`SearchSpec` of the model block ``m`` (``where`` names it, e.g.
    ``FILE: models[2]``), or None when it has no ``search:``; a RecvaeError names the bad key."""
    tuning = {k: getattr(m, k) for k in ("trials", "timeout_minutes", "sampler", "pruner", "storage")}
    if m.search is None:
        given = [k for k, v in tuning.items() if v is not None]
        if given:
            raise RecvaeError(f"{where}.{given[0]}: only for a model with a search: block")
        return None
    from recvae.models import model_class

    cls = model_class(m.model)
    raw, is_default = m.search, False
    if isinstance(raw, str):
        if raw != "default":
            raise RecvaeError(
                f"{where}.search: expected 'default' or a mapping of parameters, got {raw!r}"
            )
        from recvae.search.spaces import DEFAULT_SPACES

        if m.model not in DEFAULT_SPACES:
            raise RecvaeError(
                f"{where}.search: no default space for {m.model}; list the parameters "
                f"(defaults exist for {', '.join(DEFAULT_SPACES)})"
            )
        raw, is_default = DEFAULT_SPACES[m.model], True
    if not isinstance(raw, dict) or not raw:
        raise RecvaeError(f"{where}.search: expected a non-empty mapping of parameters or 'default'")

    hints = _field_types(cls)
    space: dict[str, Param] = {}
    for name, spec in raw.items():
        key = f"{where}.search.{name}"
        if name not in hints:
            raise RecvaeError(
                f"{key}: unknown parameter for {m.model}; expected one of {', '.join(sorted(hints))}"
            )
        space[name] = parse_param(spec, hints[name], key)
        _try_values(cls, m.params, name, space[name], key)

    trials = _pick(tuning["trials"], defaults.trials)
    if not is_int(trials) or trials < 1:
        raise RecvaeError(f"{_where_of(m, 'trials', where)}: expected an integer ≥ 1, got {trials!r}")
    timeout = _pick(tuning["timeout_minutes"], defaults.timeout_minutes)
    if timeout is not None and not (is_real(timeout) and timeout > 0):
        raise RecvaeError(
            f"{_where_of(m, 'timeout_minutes', where)}: expected a number > 0, got {timeout!r}"
        )
    sampler = parse_named(
        _pick(tuning["sampler"], defaults.sampler), SAMPLERS, _where_of(m, "sampler", where)
    )
    pruner = parse_named(
        _pick(tuning["pruner"], defaults.pruner), PRUNERS, _where_of(m, "pruner", where)
    )
    storage = _pick(tuning["storage"], defaults.storage)
    if storage is not None:
        check_storage(storage, _where_of(m, "storage", where))
    if not is_int(defaults.seed) or defaults.seed < 0:
        raise RecvaeError(f"{where.split(':')[0]}: search.seed: expected an integer ≥ 0")
    spec = SearchSpec(space, trials, timeout, sampler, pruner, storage, defaults.seed, is_default)
    if sampler.name == "grid":
        continuous = [n for n, p in space.items() if isinstance(p, FloatRange) and p.step is None]
        if continuous:
            raise RecvaeError(
                f"{_where_of(m, 'sampler', where)}: grid needs a finite space, but "
                f"{continuous[0]} is a continuous range; give it a step or choices"
            )
    return spec


def check_search_config(defaults: SearchConfig, source: str) -> None:
    """The pipeline's own ``search:`` values, whether or not a model block overrides them."""
    if not is_int(defaults.trials) or defaults.trials < 1:
        raise RecvaeError(f"{source}: search.trials: expected an integer ≥ 1, got {defaults.trials!r}")
    timeout = defaults.timeout_minutes
    if timeout is not None and not (is_real(timeout) and timeout > 0):
        raise RecvaeError(f"{source}: search.timeout_minutes: expected a number > 0, got {timeout!r}")
    parse_named(defaults.sampler, SAMPLERS, f"{source}: search.sampler")
    parse_named(defaults.pruner, PRUNERS, f"{source}: search.pruner")
    if defaults.storage is not None:
        check_storage(defaults.storage, f"{source}: search.storage")
    if not is_int(defaults.seed) or defaults.seed < 0:
        raise RecvaeError(f"{source}: search.seed: expected an integer ≥ 0, got {defaults.seed!r}")


def where_of(m: Any, name: str, where: str) -> str:
    """The key of a tuning setting: the model block's own, or the pipeline's ``search.NAME``."""
    return _where_of(m, name, where)


def parse_param(spec: Any, kind: str, key: str) -> Param:
    """One parameter's ``{low, high[, log][, step]}`` or ``{choices: [...]}``. ``kind`` is the
    model field's type (``int``, ``float`` or ``other``): integer fields get integer ranges."""
    if not isinstance(spec, dict):
        raise RecvaeError(
            f"{key}: expected {{low: L, high: H[, log: true][, step: S]}} or {{choices: [...]}}, "
            f"got {spec!r}"
        )
    keys = set(spec)
    if "choices" in keys:
        if keys != {"choices"}:
            raise RecvaeError(f"{key}: give choices alone, not with {', '.join(sorted(keys - {'choices'}))}")
        values = spec["choices"]
        if not isinstance(values, list):
            raise RecvaeError(f"{key}.choices: expected a list, got {values!r}")
        if not values:
            raise RecvaeError(f"{key}.choices: the list is empty; give at least one value")
        texts = [json.dumps(v, sort_keys=True) for v in values]
        if len(set(texts)) != len(texts):
            raise RecvaeError(f"{key}.choices: a value is listed twice")
        return Choice(tuple(values))
    unknown = keys - {"low", "high", "log", "step"}
    if unknown:
        raise RecvaeError(
            f"{key}: unknown key {sorted(unknown)[0]!r}; expected low, high, log, step or choices"
        )
    if not {"low", "high"} <= keys:
        raise RecvaeError(f"{key}: a range needs both low and high")
    if kind == "other":
        raise RecvaeError(f"{key}: not a numeric parameter; give {{choices: [...]}}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise RecvaeError(f"{key}.log: expected true or false, got {log!r}")
    for name, value in (("low", low), ("high", high)):
        if not is_real(value):
            raise RecvaeError(f"{key}.{name}: expected a number, got {value!r}")
    integer = kind == "int" or (
        kind == "any" and is_int(low) and is_int(high) and (step is None or is_int(step))
    )
    if integer:
        for name, value in (("low", low), ("high", high), ("step", step)):
            if value is not None and not is_int(value):
                raise RecvaeError(f"{key}.{name}: expected an integer (an integer parameter), got {value!r}")
    if low >= high:
        raise RecvaeError(f"{key}: low {low} must be < high {high}")
    if log and low <= 0:
        raise RecvaeError(f"{key}: log needs low > 0, got low {low}")
    if step is not None:
        if not is_real(step) or step <= 0:
            raise RecvaeError(f"{key}.step: expected a number > 0, got {step!r}")
        if log and (not integer or step != 1):
            raise RecvaeError(f"{key}: log and step do not go together; give one of them")
        if step > high - low:
            raise RecvaeError(f"{key}.step: {step} is wider than the range [{low}, {high}]")
    if integer:
        return IntRange(int(low), int(high), int(step or 1), log)
    return FloatRange(float(low), float(high), log, None if step is None else float(step))


def parse_named(value: Any, known: dict[str, tuple[str, ...]], key: str) -> Named:
    """``name`` or ``{name: NAME, option: value, ...}`` for a sampler or pruner."""
    if isinstance(value, str):
        name, options = value, {}
    elif isinstance(value, dict):
        if "name" not in value:
            raise RecvaeError(f"{key}: a mapping needs name: (one of {', '.join(known)})")
        options = {k: v for k, v in value.items() if k != "name"}
        name = value["name"]
    else:
        raise RecvaeError(f"{key}: expected a name or a mapping, got {value!r}")
    if name not in known:
        what = key.rsplit(".", 1)[-1].rsplit(" ", 1)[-1]
        raise RecvaeError(f"{key}: unknown {what} {name!r}; expected one of {', '.join(known)}")
    for option in options:
        if option not in known[name]:
            allowed = ", ".join(known[name]) or "none"
            raise RecvaeError(f"{key}.{option}: not an option of {name}; options: {allowed}")
    return Named(name, options)


def check_storage(url: Any, key: str) -> None:
    """An SQLAlchemy database URL Optuna can keep studies in."""
    if not isinstance(url, str) or "://" not in url:
        raise RecvaeError(
            f"{key}: expected a database URL such as postgresql://user@host/db or "
            f"sqlite:///path/optuna.db, got {url!r}"
        )
    scheme = url.split("://", 1)[0].split("+", 1)[0].lower()
    if scheme not in STORAGE_SCHEMES:
        raise RecvaeError(
            f"{key}: unsupported storage {scheme!r}; expected a database URL "
            f"({', '.join(STORAGE_SCHEMES)})"
        )


# --------------------------------------------------------------------------- helpers
def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def _where_of(m: Any, name: str, where: str) -> str:
    """The key of a tuning setting: the model block's own, or the pipeline's ``search.NAME``."""
    if getattr(m, name) is not None:
        return f"{where}.{name}"
    return f"{where.split(': ', 1)[0]}: search.{name}" if ": " in where else f"search.{name}"


def _field_types(cls: type) -> dict[str, str]:
    """The model's constructor fields and whether each is an ``int``, a ``float`` or ``other``."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        args = _union_args(hints.get(f.name, Any))
        if args is None:
            out[f.name] = "any"
        elif float in args:
            out[f.name] = "float"
        elif int in args:
            out[f.name] = "int"
        else:
            out[f.name] = "other"
    return out


def _union_args(tp: Any) -> set[Any] | None:
    if tp is Any:
        return None
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return {a for a in typing.get_args(tp) if a is not type(None)}
    return {typing.get_origin(tp) or tp}


def _try_values(cls: type, fixed: dict[str, Any], name: str, param: Param, key: str) -> None:
    """Construct the model at each bound (each choice) so a value it refuses fails now."""
    for value in param.bounds():
        try:
            cls(**{**fixed, name: value})
        except (RecvaeError, TypeError, ValueError) as e:
            raise RecvaeError(f"{key}: {value!r} is not a valid value ({e})") from None
