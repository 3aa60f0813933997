"""recvae.search.spec and spaces: a model block's search: parsed at config load, one-line errors
naming the file and the key (exit 2 from `recvae run --dry-run`), the built-in spaces."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recvae import cli
from recvae.config import load_config
from recvae.models import MODEL_NAMES
from recvae.search.spaces import DEFAULT_SPACES
from recvae.search.spec import Choice, FloatRange, IntRange, model_search

REPO = Path(__file__).resolve().parents[2]
BASE = {
    "name": "spec-test",
    "data": {"source": "movielens", "path": str(REPO / "data" / "ml-latest-small.zip")},
    "models": [{"model": "popularity"}, {"model": "ease"}, {"model": "mult-vae"}],
}


def write(tmp_path: Path, model: dict | None = None, **top: object) -> Path:
    """A pipeline whose third model block (models[2], a mult-vae) is ``model``."""
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    if model is not None:
        raw["models"][2] = model
    raw.update(top)
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_search_block_parses_into_typed_parameters(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "model": "mult-vae",
        "params": {"epochs": 7, "lr": 0.5},
        "search": {
            "lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "dropout": {"low": 0, "high": 0.5},  # integer bounds of a float field: a float range
            "latent_dim": {"low": 100, "high": 300, "step": 50},
            "hidden_dims": {"choices": [[], [600]]},
        },
        "trials": 7, "sampler": {"name": "tpe", "n_startup_trials": 3}, "pruner": "hyperband",
    })
    cfg = load_config(path)
    spec = model_search(cfg, cfg.models[2])
    assert spec is not None and model_search(cfg, cfg.models[1]) is None
    assert spec.space["lr"] == FloatRange(1e-4, 1e-2, log=True)
    assert spec.space["dropout"] == FloatRange(0.0, 0.5)
    assert spec.space["latent_dim"] == IntRange(100, 300, step=50)
    assert spec.space["latent_dim"].grid() == [100, 150, 200, 250, 300]
    choice = spec.space["hidden_dims"]
    assert isinstance(choice, Choice) and choice.categories() == ["[]", "[600]"]
    assert choice.decode("[600]") == [600]
    assert (spec.trials, spec.sampler.name, spec.sampler.options, spec.pruner.name) == (
        7, "tpe", {"n_startup_trials": 3}, "hyperband")
    assert spec.storage is None and spec.seed == 98765


def test_model_settings_override_the_pipelines_search_section(tmp_path: Path) -> None:
    path = write(
        tmp_path, {"model": "mult-vae", "search": "default", "pruner": "none"},
        search={"trials": 4, "sampler": "random", "storage": "postgresql://u:secret@db/optuna"},
    )
    cfg = load_config(path)
    spec = model_search(cfg, cfg.models[2])
    assert (spec.trials, spec.sampler.name, spec.pruner.name) == (4, "random", "none")
    assert spec.storage == "postgresql://u:secret@db/optuna" and spec.default_space
    # --set reaches every tuned model through the pipeline's section
    cfg = load_config(path, {"search.trials": 2})
    assert model_search(cfg, cfg.models[2]).trials == 2


@pytest.mark.parametrize("name", sorted(DEFAULT_SPACES))
def test_default_spaces_are_valid_for_their_models(tmp_path: Path, name: str) -> None:
    if name not in MODEL_NAMES:
        pytest.skip(f"{name} is not registered in this build")
    path = write(tmp_path, {"model": name, "label": "tuned", "search": "default"})
    cfg = load_config(path)  # each bound and choice is tried on the model's constructor
    spec = model_search(cfg, cfg.models[2])
    assert set(spec.space) == set(DEFAULT_SPACES[name])


def test_mult_vae_default_space_covers_the_shapes_and_beta_caps() -> None:
    space = DEFAULT_SPACES["mult-vae"]
    assert space["hidden_dims"]["choices"] == [[], [600]]
    assert (space["anneal_cap"]["low"], space["anneal_cap"]["high"]) == (0.1, 1.0)
    assert {"lr", "dropout", "weight_decay"} <= set(space)


BAD = [
    # (model block or top-level override, the key named, what the line says)
    ({"search": {"lr": {"low": 0.1, "high": 0.01}}}, "models[2].search.lr", "low 0.1 must be < high 0.01"),
    ({"search": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "models[2].search.lr", "log needs low > 0"),
    ({"search": {"lrr": {"low": 0.1, "high": 0.2}}}, "models[2].search.lrr", "unknown parameter"),
    ({"search": {"hidden_dims": {"choices": []}}}, "models[2].search.hidden_dims.choices", "empty"),
    ({"search": {"lr": {"low": 0.1}}}, "models[2].search.lr", "needs both low and high"),
    ({"search": {"lr": {"low": 0.1, "high": 0.2, "lg": True}}}, "models[2].search.lr", "unknown key 'lg'"),
    ({"search": {"latent_dim": {"low": 1.5, "high": 10}}}, "models[2].search.latent_dim.low",
     "expected an integer"),
    ({"search": {"dropout": {"low": 0.5, "high": 1.0}}}, "models[2].search.dropout",
     "1.0 is not a valid value"),
    ({"search": {"hidden_dims": {"low": 1, "high": 2}}}, "models[2].search.hidden_dims",
     "not a numeric parameter"),
    ({"search": {}}, "models[2].search", "non-empty mapping"),
    ({"search": "defaults"}, "models[2].search", "expected 'default'"),
    ({"search": "default", "trials": -3}, "models[2].trials", "expected an integer ≥ 1, got -3"),
    ({"search": "default", "trials": 0}, "models[2].trials", "expected an integer ≥ 1, got 0"),
    ({"search": "default", "sampler": "cmaes"}, "models[2].sampler", "unknown sampler 'cmaes'"),
    ({"search": "default", "pruner": "mean"}, "models[2].pruner", "unknown pruner 'mean'"),
    ({"search": "default", "pruner": {"name": "median", "warmup": 3}}, "models[2].pruner.warmup",
     "not an option of median"),
    ({"search": "default", "pruner": {"name": "median", "n_startup_trials": -1}}, "models[2].pruner",
     "cannot be negative"),
    ({"search": "default", "timeout_minutes": 0}, "models[2].timeout_minutes", "expected a number > 0"),
    ({"search": "default", "storage": "redis://localhost"}, "models[2].storage", "unsupported storage"),
    ({"search": "default", "sampler": "grid"}, "models[2].sampler", "grid needs a finite space"),
    ({"trials": 5}, "models[2].trials", "only for a model with a search: block"),
    ({"top": {"search": {"trials": -1}}, "search": "default"}, "search.trials", "expected an integer ≥ 1"),
]


@pytest.mark.parametrize(("block", "key", "says"), BAD, ids=[f"{b[1]}:{b[2][:20]}" for b in BAD])
def test_a_bad_spec_is_one_line_naming_the_file_and_key_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], block: dict, key: str, says: str
) -> None:
    block = dict(block)
    top = block.pop("top", {})
    path = write(tmp_path, {"model": "mult-vae", **block}, **top)
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"recvae: error: {path}: {key}"), err
    assert says in err, err


def test_dry_run_accepts_a_good_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, {"model": "mult-vae", "search": "default", "trials": 3})
    assert cli.main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "mult-vae" in out
