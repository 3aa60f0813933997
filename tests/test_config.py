"""Tests for recvae.config: every shipped pipeline parses; errors name the file and the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from recvae.config import (
    DataConfig,
    ModelConfig,
    PipelineConfig,
    build_model,
    load_config,
    parse_config,
    to_dict,
)
from recvae.errors import RecvaeError

REPO = Path(__file__).parents[1]
PIPELINES = sorted((REPO / "pipelines").glob("*.yaml"))

MINIMAL = {
    "data": {"source": "movielens", "path": "data/ml-latest-small.zip"},
    "models": [{"model": "ease", "params": {"l2": 100.0}}],
}


def write(tmp_path: Path, raw: dict | str, name: str = "pipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def with_(base: dict, dotted: str, value: object) -> dict:
    """A deep copy of ``base`` with one dotted key set."""
    out = yaml.safe_load(yaml.safe_dump(base))
    node = out
    *parents, last = dotted.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def raises_one_line(*patterns: str):
    """pytest.raises(RecvaeError) checking that the message is one line containing each pattern."""

    class Check:
        def __enter__(self):
            self.ctx = pytest.raises(RecvaeError)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self.ctx.__exit__(*exc)
            message = str(self.info.value)
            assert "\n" not in message, message
            for p in patterns:
                assert re.search(p, message), f"{p!r} not in {message!r}"
            return suppressed

    return Check()


# ------------------------------------------------------------------ shipped pipelines
def test_there_are_pipelines() -> None:
    assert {p.stem for p in PIPELINES} >= {"quickstart", "ml-20m", "netflix", "msd", "gowalla"}


@pytest.mark.parametrize("path", PIPELINES, ids=[p.stem for p in PIPELINES])
def test_shipped_pipeline_parses(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)
    assert cfg.models and all(isinstance(m, ModelConfig) for m in cfg.models)
    assert cfg.source_file == str(path)
    assert len({m.run_name for m in cfg.models}) == len(cfg.models)
    assert to_dict(cfg)["data"]["source"] == cfg.data.source


def test_quickstart_values() -> None:
    cfg = load_config(REPO / "pipelines" / "quickstart.yaml")
    assert cfg.data.preprocess.threshold == 3.5
    assert cfg.data.split.method == "strong"
    assert cfg.data.split.n_heldout_users == 60
    assert cfg.data.split.seed == 98765
    assert cfg.data.dataset_name == "ml-latest-small"
    assert cfg.evaluation.ks == [20, 50, 100]


def test_ml20m_follows_the_paper() -> None:
    cfg = load_config(REPO / "pipelines" / "ml-20m.yaml")
    pp, split = cfg.data.preprocess, cfg.data.split
    assert (pp.threshold, pp.min_item_users, pp.min_user_items, pp.iterate) == (3.5, 0, 5, False)
    assert (split.method, split.n_heldout_users, split.test_prop, split.seed) == (
        "strong", 10_000, 0.2, 98765
    )


# ------------------------------------------------------------------ defaults
def test_defaults_of_a_minimal_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.data.split.n_heldout_users is None
    assert cfg.data.preprocess.min_user_items == 5
    assert cfg.data.out_dir == Path("runs") / "data" / "ml-latest-small"
    assert cfg.models[0].run_name == "ease"
    assert cfg.recommend.format == "parquet"


def test_dataset_name_strips_suffixes() -> None:
    assert DataConfig(source="msd", path="raw/train_triplets.txt.gz").dataset_name == "train_triplets"
    assert DataConfig(source="table", path="x/events.csv", name="shop").dataset_name == "shop"


# ------------------------------------------------------------------ errors
def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, with_(MINIMAL, "epochs", 3))
    with raises_one_line(re.escape(str(path)), "unknown key 'epochs'", "expected one of .*models"):
        load_config(path)


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = write(tmp_path, with_(MINIMAL, "data.preprocess.min_users", 3))
    with raises_one_line(re.escape(str(path)), r"data\.preprocess", "unknown key 'min_users'",
                         "min_user_items"):
        load_config(path)


@pytest.mark.parametrize(
    ("dotted", "value", "where", "expected"),
    [
        ("data.split.seed", "x", r"data\.split\.seed", "expected an integer, got str 'x'"),
        ("data.split.n_heldout_users", 1.5, r"data\.split\.n_heldout_users", "expected int or NoneType"),
        ("data.preprocess.iterate", "yes", r"data\.preprocess\.iterate", "expected true or false"),
        ("data.preprocess.threshold", "high", r"data\.preprocess\.threshold", "expected float or NoneType"),
        ("evaluation.ks", [20, "x"], r"evaluation\.ks\[1\]", "expected an integer, got str 'x'"),
        ("evaluation.ks", 20, r"evaluation\.ks", "expected a list"),
        ("data.options", [1], r"data\.options", "expected a mapping"),
        ("data.path", 3, r"data\.path", "expected a string"),
        ("data", "ml", r"data", "expected a mapping"),
    ],
)
def test_wrong_type_names_the_key_path(tmp_path: Path, dotted: str, value: object, where: str,
                                       expected: str) -> None:
    path = write(tmp_path, with_(MINIMAL, dotted, value))
    with raises_one_line(re.escape(str(path)) + ": " + where + ":", expected):
        load_config(path)


def test_wrong_model_param_type(tmp_path: Path) -> None:
    raw = {**MINIMAL, "models": [{"model": "mult-vae", "params": {"epochs": "ten"}}]}
    path = write(tmp_path, raw)
    with raises_one_line(re.escape(str(path)), r"models\[0\]\.params", "epochs", "'ten'"):
        load_config(path)


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, {"data": {"source": "movielens"}, "models": [{"model": "ease"}]})
    with raises_one_line(re.escape(str(path)), "data", "missing required key 'path'"):
        load_config(path)


def test_unknown_model(tmp_path: Path) -> None:
    path = write(tmp_path, {**MINIMAL, "models": [{"model": "ease"}, {"model": "mult-gan"}]})
    with raises_one_line(re.escape(str(path)), r"models\[1\]\.model", "unknown model 'mult-gan'",
                         "mult-vae"):
        load_config(path)


def test_unknown_model_param(tmp_path: Path) -> None:
    path = write(tmp_path, {**MINIMAL, "models": [{"model": "mult-vae", "params": {"learning_rate": 1}}]})
    with raises_one_line(re.escape(str(path)), r"models\[0\]\.params", "unknown parameter 'learning_rate'",
                         "for mult-vae", r"\blr\b"):
        load_config(path)


def test_duplicate_labels(tmp_path: Path) -> None:
    models = [{"model": "ease", "label": "a"}, {"model": "popularity", "label": "a"}]
    path = write(tmp_path, {**MINIMAL, "models": models})
    with raises_one_line(re.escape(str(path)), r"models\[1\]", "duplicate run name 'a'"):
        load_config(path)
    two_ease = {**MINIMAL, "models": [{"model": "ease"}, {"model": "ease", "label": "ease-2"}]}
    assert [m.run_name for m in load_config(write(tmp_path, two_ease)).models] == ["ease", "ease-2"]


@pytest.mark.parametrize(
    ("dotted", "value", "match"),
    [
        ("data.source", "movielenz", "data.source: unknown source 'movielenz'"),
        ("data.split.method", "loo", "data.split.method: unknown split 'loo'"),
        ("models", [], "models: the list is empty"),
        ("evaluation.ks", [20, 0], "evaluation.ks: expected positive integers"),
        ("recommend.format", "xlsx", "recommend.format: expected parquet or csv"),
        ("recommend.exclude", "seen", "recommend.exclude: expected all, train or none, got 'seen'"),
        ("recommend.fallback", "pop", "recommend.fallback: expected popularity or none, got 'pop'"),
    ],
)
def test_cross_field_checks(tmp_path: Path, dotted: str, value: object, match: str) -> None:
    path = write(tmp_path, with_(MINIMAL, dotted, value))
    with raises_one_line(re.escape(str(path)), re.escape(match)):
        load_config(path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    text = "data:\n  source: movielens\n  path: x.zip\nmodels:\n  - model: ease\n   params: [1\n"
    path = write(tmp_path, text)
    with raises_one_line(re.escape(str(path)) + r": line 6", "invalid YAML"):
        load_config(path)


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    with raises_one_line("expected a mapping at the top level, got list"):
        load_config(write(tmp_path, "- 1\n- 2\n"))
    with raises_one_line("nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")


# ------------------------------------------------------------------ overrides
def test_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    cfg = load_config(path, {"data.path": "/data/other.zip", "data.split.n_heldout_users": 5,
                             "evaluation.ks": [10], "data.preprocess.threshold": None})
    assert cfg.data.path == "/data/other.zip"
    assert cfg.data.split.n_heldout_users == 5
    assert cfg.evaluation.ks == [10]
    assert cfg.data.preprocess.threshold is None
    assert load_config(path).data.path == str(tmp_path / MINIMAL["data"]["path"])  # file unchanged


# ------------------------------------------------------------------ paths
def test_paths_in_the_file_resolve_against_its_folder(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    folder = tmp_path / "project" / "pipelines"
    folder.mkdir(parents=True)
    raw = {**MINIMAL, "output_dir": "../runs/x", "tracking": {"uri": "sqlite:///../mlflow.db"}}
    raw["data"] = {**MINIMAL["data"], "out": "cache/ds"}
    path = write(folder, raw)
    monkeypatch.chdir(tmp_path)  # anywhere else
    cfg = load_config(Path("project") / "pipelines" / "pipe.yaml")
    assert cfg.data.path == str(folder / "data" / "ml-latest-small.zip")
    assert cfg.data.out_dir == folder / "cache" / "ds"
    assert cfg.output_dir == str(tmp_path / "project" / "runs" / "x")
    assert cfg.tracking.uri == f"sqlite:///{tmp_path / 'project' / 'mlflow.db'}"
    assert cfg.tracking.uri.startswith("sqlite:////")  # four slashes: an absolute file
    # what the user types stays relative to the working directory, and so do defaults
    cfg = load_config(path, {"data.path": "mine.zip", "output_dir": "out", "tracking.uri": None})
    assert (cfg.data.path, cfg.output_dir, cfg.tracking.uri) == ("mine.zip", "out", None)
    assert load_config(write(folder, MINIMAL, "min.yaml")).output_dir == "runs"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///store/mlflow.db", "sqlite:///{base}/store/mlflow.db"),
        ("sqlite:////abs/mlflow.db", "sqlite:////abs/mlflow.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("postgresql://u@db/mlflow", "postgresql://u@db/mlflow"),
        ("mlruns", "{base}/mlruns"),
    ],
)
def test_tracking_uris_in_the_file(tmp_path: Path, uri: str, expected: str) -> None:
    path = write(tmp_path, {**MINIMAL, "tracking": {"uri": uri}})
    assert load_config(path).tracking.uri == expected.format(base=tmp_path)


def test_shipped_pipelines_write_into_the_repository(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    cfg = load_config(REPO / "pipelines" / "quickstart.yaml")
    assert cfg.data.path == str(REPO / "data" / "ml-latest-small.zip")
    assert Path(cfg.data.path).is_file()
    assert cfg.data.out_dir == REPO / "runs" / "data" / "ml-latest-small"
    assert cfg.output_dir == str(REPO / "runs" / "quickstart")
    assert cfg.tracking.uri == f"sqlite:///{REPO / 'mlflow.db'}"
    for path in PIPELINES:
        cfg = load_config(path)
        assert Path(cfg.output_dir).parent == REPO / "runs", path.name
        assert cfg.tracking.uri.startswith(f"sqlite:///{REPO}"), path.name


def test_select_models_and_check_inputs(tmp_path: Path) -> None:
    from recvae.config import check_inputs, select_models

    cfg = load_config(REPO / "pipelines" / "quickstart.yaml")
    assert [m.run_name for m in select_models(cfg, ["ease", "mult-vae"])] == ["mult-vae", "ease"]
    assert len(select_models(cfg, None)) == len(cfg.models)
    with raises_one_line("--models: 'vae' is not in .*quickstart.yaml", "expected one of mult-vae"):
        select_models(cfg, ["ease", "vae"])
    check_inputs(cfg)
    path = write(tmp_path, MINIMAL)
    with raises_one_line(re.escape(f"{path}: data.path: {tmp_path / 'data' / 'ml-latest-small.zip'}"),
                         "no such file or folder"):
        check_inputs(load_config(path))


def test_overrides_are_validated(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    with raises_one_line(re.escape(str(path)), r"data\.split\.seed", "expected an integer"):
        load_config(path, {"data.split.seed": "abc"})
    with raises_one_line(re.escape(str(path)), "unknown key 'bogus'"):
        load_config(path, {"data.bogus": 1})
    with raises_one_line(re.escape(str(path)), "cannot override 'data.path.x'"):
        load_config(path, {"data.path.x": 1})


# ------------------------------------------------------------------ build_model
def test_build_model() -> None:
    model = build_model(ModelConfig(model="ease", params={"l2": 50.0}))
    assert model.l2 == 50.0
    with raises_one_line("model.params: unknown parameter 'l3' for ease"):
        build_model(ModelConfig(model="ease", params={"l3": 1}))


def test_parse_config_source_label() -> None:
    with raises_one_line("^<config>: missing required key 'models'"):
        parse_config({"data": MINIMAL["data"]})


def test_table_names_a_metric_that_is_not_computed(tmp_path) -> None:  # noqa: ANN001
    from pathlib import Path

    from recvae.config import load_config
    from recvae.errors import RecvaeError

    repo = Path(__file__).resolve().parents[1]
    with pytest.raises(RecvaeError, match=r"evaluation.table: 'ndcg_at_10' is not computed"):
        load_config(repo / "pipelines" / "quickstart.yaml", {"evaluation.table": ["ndcg_at_10"]})
    cfg = load_config(repo / "pipelines" / "gowalla.yaml")
    assert cfg.refit is True and cfg.evaluation.table_metrics()[0] == "recall_full_at_20"
    small = load_config(repo / "pipelines" / "quickstart.yaml", {"evaluation.ks": [10, 5]})
    assert small.evaluation.table_metrics() == ["recall_at_5", "recall_at_10", "ndcg_at_10"]
