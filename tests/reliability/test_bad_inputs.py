"""A corpus of bad inputs, one per case, each run through the CLI in this process.

Every case must end the same way: exit status 2, exactly one line on stderr starting with
``recvae: error:`` that names the file (and the line or field where there is one) and what was
expected, no traceback, and nothing left in the output location, hidden temporaries included.

Cases cover every reader (MovieLens csv/dat/u.data/zip, Netflix, MSD, LightGCN, citeulike, tables
as CSV/TSV/Parquet/gz), the pipeline YAML, saved models, dataset folders, run records given to
``recvae sync``, the numeric flags and unwritable outputs. After the corpus: a journal cut short
(a warning, not an error) and a served model given a bad ``k`` (HTTP 400 with one line).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import pickle
import re
import struct
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recvae.cli import main
from recvae.io import sha256_file
from tests.reliability.conftest import copy_of, entries, temporaries


@dataclass
class Ctx:
    """Where a case writes its bad input (``tmp``) and where the command's output goes (``out``)."""

    tmp: Path
    built: dict[str, Path]

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            path.write_text(content)
        else:
            path.write_bytes(content)
        return path

    def copy(self, key: str) -> Path:
        return copy_of(self.built[key], self.tmp / "in" / key)

    # the commands, each writing into ``out``
    def ingest(self, source: str, path: Path, *extra: str) -> list[str]:
        return ["ingest", "--source", source, "--path", str(path), "--out", str(self.out / "ds"),
                *extra]

    def recommend(self, model: Path | None = None, data: Path | None = None, *extra: str) -> list[str]:
        return ["recommend", str(model or self.built["popularity"]), "--data",
                str(data or self.built["dataset"]), "--out", str(self.out / "recs.parquet"),
                "--k", "5", "--quiet", *extra]

    def train(self, *extra: str) -> list[str]:
        return ["train", "--data", str(self.built["dataset"]), "--out", str(self.out / "model"),
                "--no-track", "--quiet", *extra]


Build = Callable[[Ctx], list[str]]


@dataclass(frozen=True)
class Case:
    id: str
    build: Build  # writes the bad input, returns the command line
    expect: tuple[str, ...]  # regexes the error line must match: the file, the place, what was expected


CASES: list[Case] = []


def case(id: str, *expect: str) -> Callable[[Build], Build]:
    def register(build: Build) -> Build:
        CASES.append(Case(id, build, expect))
        return build

    return register


ML_HEADER = "userId,movieId,rating,timestamp\n"
ML_ROWS = "".join(f"{u},{i},4.0,{1000 + i}\n" for u in range(1, 4) for i in range(1, 7))


def zip_with(ctx: Ctx, name: str, members: dict[str, str]) -> Path:
    path = ctx.tmp / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for member, text in members.items():
            zf.writestr(member, text)
    return path


def patch_central_directory(path: Path, offset: int, value: int) -> None:
    """Overwrite a 2-byte field of the (only) central-directory entry of a zip."""
    data = bytearray(path.read_bytes())
    at = data.index(b"PK\x01\x02") + offset
    data[at : at + 2] = struct.pack("<H", value)
    path.write_bytes(bytes(data))


# ================================================================== MovieLens
@case("ml-csv-wrong-header", r"ratings\.csv, line 1", "expected the header userId,movieId,rating")
def _(ctx: Ctx) -> list[str]:
    return ctx.ingest("movielens", ctx.file("ratings.csv", "userId,movieId,stars,timestamp\n1,2,4,5\n"))


@case("ml-csv-text-user-id", r"ratings\.csv, line 4", "'userId'", "expected an integer", "'abc'")
def _(ctx: Ctx) -> list[str]:
    rows = ML_HEADER + "1,1,4.0,1\n1,2,4.0,2\nabc,3,4.0,3\n"
    return ctx.ingest("movielens", ctx.file("ratings.csv", rows))


@case("ml-csv-extra-field", r"ratings\.csv, line 3", r"4 fields\), got 5")
def _(ctx: Ctx) -> list[str]:
    rows = ML_HEADER + "1,1,4.0,1\n1,2,4.0,2,9\n"
    return ctx.ingest("movielens", ctx.file("ratings.csv", rows))


@case("ml-csv-infinite-rating", r"ratings\.csv, line 3", "'rating'", "expected a finite number")
def _(ctx: Ctx) -> list[str]:
    return ctx.ingest("movielens", ctx.file("ratings.csv", ML_HEADER + "1,1,4.0,1\n1,2,inf,2\n"))


@case("ml-csv-empty", r"ratings\.csv: empty file", "expected MovieLens ratings")
def _(ctx: Ctx) -> list[str]:
    return ctx.ingest("movielens", ctx.file("ratings.csv", ""))


@case("ml-dat-single-colon", r"ratings\.dat, line 2", "expected UserID::MovieID::Rating::Timestamp")
def _(ctx: Ctx) -> list[str]:
    return ctx.ingest("movielens", ctx.file("ratings.dat", "1::1::5::1\n1:2::5::2\n"))


@case("ml-udata-missing-field", r"u\.data, line 2", r"4 fields\), got 3")
def _(ctx: Ctx) -> list[str]:
    return ctx.ingest("movielens", ctx.file("u.data", "1\t1\t5\t1\n1\t2\t5\n"))


@case("ml-csv-gz-truncated", r"ratings\.csv\.gz: corrupt or truncated gzip data")
def _(ctx: Ctx) -> list[str]:
    rows = ML_HEADER + "".join(f"{u},{i},4.0,{i}\n" for u in range(200) for i in range(50))
    data = gzip.compress(rows.encode())
    return ctx.ingest("movielens", ctx.file("ratings.csv.gz", data[: len(data) // 2]))


@case("ml-zip-truncated", r"ml\.zip", "not a valid zip file")
def _(ctx: Ctx) -> list[str]:
    path = zip_with(ctx, "ml.zip", {"ml/ratings.csv": ML_HEADER + ML_ROWS * 20})
    path.write_bytes(path.read_bytes()[:-60])  # the central directory is at the end
    return ctx.ingest("movielens", path)


@case("ml-zip-without-ratings", r"ml\.zip: the zip holds no MovieLens ratings file", "movies.csv")
def _(ctx: Ctx) -> list[str]:
    return ctx.ingest("movielens", zip_with(ctx, "ml.zip", {"ml/movies.csv": "movieId,title\n"}))


@case("ml-zip-encrypted", r"ml\.zip: ml/ratings\.csv is encrypted", "expected an unencrypted zip")
def _(ctx: Ctx) -> list[str]:
    path = zip_with(ctx, "ml.zip", {"ml/ratings.csv": ML_HEADER + ML_ROWS})
    patch_central_directory(path, 8, 0x1)  # general purpose flag: bit 0 = encrypted
    return ctx.ingest("movielens", path)


@case("ml-zip-unknown-method", r"ml\.zip: ml/ratings\.csv uses zip compression method 99",
      "expected stored, deflate")
def _(ctx: Ctx) -> list[str]:
    path = zip_with(ctx, "ml.zip", {"ml/ratings.csv": ML_HEADER + ML_ROWS})
    patch_central_directory(path, 10, 99)  # AES-encrypted entries say 99
    return ctx.ingest("movielens", path)


@case("ml-folder-two-ratings-files", "expected one MovieLens ratings file", "several")
def _(ctx: Ctx) -> list[str]:
    ctx.file("ml/ratings.csv", ML_HEADER + ML_ROWS)
    ctx.file("ml/ratings.dat", "1::1::5::1\n")
    return ctx.ingest("movielens", ctx.tmp / "in" / "ml")


# ================================================================== Netflix
@case("netflix-no-movie-line", r"mv_0000001\.txt, line 1", "expected the first line to be 'MOVIEID:'")
def _(ctx: Ctx) -> list[str]:
    ctx.file("training_set/mv_0000001.txt", "6,3,2005-09-06\n")
    return ctx.ingest("netflix", ctx.tmp / "in" / "training_set")


@case("netflix-bad-date", r"mv_0000001\.txt, line 3", "'date'", "expected a date YYYY-MM-DD")
def _(ctx: Ctx) -> list[str]:
    ctx.file("training_set/mv_0000001.txt", "1:\n6,3,2005-09-06\n7,4,2005-13-45\n")
    return ctx.ingest("netflix", ctx.tmp / "in" / "training_set")


@case("netflix-blank-line", r"mv_0000001\.txt, line 3", "blank line", "expected CustomerID,Rating,Date")
def _(ctx: Ctx) -> list[str]:
    ctx.file("training_set/mv_0000001.txt", "1:\n6,3,2005-09-06\n\n7,4,2005-09-07\n")
    return ctx.ingest("netflix", ctx.tmp / "in" / "training_set")


@case("netflix-no-files", "no Netflix files", r"expected mv_\*\.txt")
def _(ctx: Ctx) -> list[str]:
    ctx.file("netflix/README", "nothing here\n")
    return ctx.ingest("netflix", ctx.tmp / "in" / "netflix")


@case("netflix-file-is-a-folder", r"mv_0000002\.txt: cannot read \(Is a directory\)")
def _(ctx: Ctx) -> list[str]:
    ctx.file("training_set/mv_0000001.txt", "1:\n6,3,2005-09-06\n")
    (ctx.tmp / "in" / "training_set" / "mv_0000002.txt").mkdir()
    return ctx.ingest("netflix", ctx.tmp / "in" / "training_set")


# ================================================================== MSD
@case("msd-text-play-count", r"train_triplets\.txt, line 2", "'play_count'", "expected an integer",
      "'many'")
def _(ctx: Ctx) -> list[str]:
    return ctx.ingest("msd", ctx.file("train_triplets.txt", "u1\ts1\t3\nu1\ts2\tmany\n"))


@case("msd-two-fields", r"train_triplets\.txt, line 1", r"user<TAB>song<TAB>play_count \(3 fields\)")
def _(ctx: Ctx) -> list[str]:
    return ctx.ingest("msd", ctx.file("train_triplets.txt", "u1\ts1\nu1\ts2\t1\n"))


@case("msd-plain-file-named-gz", r"train_triplets\.txt\.gz: named \.gz but not gzip-compressed",
      "rename it")
def _(ctx: Ctx) -> list[str]:
    return ctx.ingest("msd", ctx.file("train_triplets.txt.gz", "u1\ts1\t3\n"))


# ================================================================== LightGCN
@case("lightgcn-missing-test", r"test\.txt: no such file", "needs train.txt and test.txt")
def _(ctx: Ctx) -> list[str]:
    ctx.file("gowalla/train.txt", "0 1 2\n1 2 3\n")
    return ctx.ingest("lightgcn", ctx.tmp / "in" / "gowalla", "--split", "predefined")


@case("lightgcn-text-item", r"train\.txt, line 2", "expected lines 'user item item", "'x7'")
def _(ctx: Ctx) -> list[str]:
    ctx.file("gowalla/train.txt", "0 1 2\n1 2 x7\n")
    ctx.file("gowalla/test.txt", "0 3\n")
    return ctx.ingest("lightgcn", ctx.tmp / "in" / "gowalla", "--split", "predefined")


@case("lightgcn-item-list-header", r"item_list\.txt, line 1", "expected the header 'org_id remap_id'")
def _(ctx: Ctx) -> list[str]:
    ctx.file("gowalla/train.txt", "0 1 2\n1 2 3\n")
    ctx.file("gowalla/test.txt", "0 3\n")
    ctx.file("gowalla/item_list.txt", "id remap\n10 0\n")
    return ctx.ingest("lightgcn", ctx.tmp / "in" / "gowalla", "--split", "predefined")


@case("lightgcn-user-not-in-list", r"test\.txt, line 2", "user 5 is not in user_list.txt")
def _(ctx: Ctx) -> list[str]:
    ctx.file("gowalla/train.txt", "0 1 2\n1 2 3\n")
    ctx.file("gowalla/test.txt", "0 3\n5 1\n")
    ctx.file("gowalla/user_list.txt", "org_id remap_id\nalice 0\nbob 1\n")
    return ctx.ingest("lightgcn", ctx.tmp / "in" / "gowalla", "--split", "predefined")


@case("lightgcn-nul-in-id", r"train\.txt, line 2", "NUL byte in the id", "expected lines 'user item item",
      r"'2\\x00'")
def _(ctx: Ctx) -> list[str]:
    ctx.file("gowalla/train.txt", b"0 1 2\n1 2\x00 3\n")
    ctx.file("gowalla/test.txt", "0 3\n")
    return ctx.ingest("lightgcn", ctx.tmp / "in" / "gowalla", "--split", "predefined")


@case("lightgcn-utf16", r"train\.txt: UTF-16 \(little-endian\) text \(byte-order mark FF FE\)",
      "expected UTF-8: re-encode it, e.g. iconv -f UTF-16 -t UTF-8")
def _(ctx: Ctx) -> list[str]:
    ctx.file("gowalla/train.txt", "0 1 2\n1 2 3\n".encode("utf-16"))
    ctx.file("gowalla/test.txt", "0 3\n")
    return ctx.ingest("lightgcn", ctx.tmp / "in" / "gowalla", "--split", "predefined")


# ================================================================== citeulike
@case("citeulike-count-mismatch", r"users\.dat, line 2", "the count is 3 but the line lists 2")
def _(ctx: Ctx) -> list[str]:
    return ctx.ingest("citeulike", ctx.file("users.dat", "2 0 1\n3 4 5\n"))


@case("citeulike-empty-line", r"users\.dat, line 2", "empty line", "expected 'n item item")
def _(ctx: Ctx) -> list[str]:
    return ctx.ingest("citeulike", ctx.file("users.dat", "2 0 1\n\n1 3\n"))


# ================================================================== tables
def table(ctx: Ctx, path: Path, *options: str) -> list[str]:
    extra = [a for o in options for a in ("--option", o)]
    return ctx.ingest("table", path, *extra)


@case("table-csv-gz-truncated", r"events\.csv\.gz: corrupt or truncated gzip data")
def _(ctx: Ctx) -> list[str]:
    rows = "user,item\n" + "".join(f"{u},{i}\n" for u in range(300) for i in range(40))
    data = gzip.compress(rows.encode())
    return table(ctx, ctx.file("events.csv.gz", data[: len(data) * 2 // 3]))


@case("table-plain-file-named-gz", r"events\.csv\.gz: named \.gz but not gzip-compressed",
      r"starts with b'\\x\w\w|starts with b'")
def _(ctx: Ctx) -> list[str]:
    return table(ctx, ctx.file("events.csv.gz", "user,item\n1,2\n"))


@case("table-tsv-gz-garbage-inside", r"events\.tsv\.gz: corrupt or truncated gzip data")
def _(ctx: Ctx) -> list[str]:
    data = bytearray(gzip.compress(("user\titem\n" + "1\t2\n" * 5000).encode()))
    data[40:80] = bytes(40)  # damage the deflate stream, keep the header
    return table(ctx, ctx.file("events.tsv.gz", bytes(data)))


@case("table-parquet-truncated", r"events\.parquet: not a readable Parquet file")
def _(ctx: Ctx) -> list[str]:
    path = ctx.tmp / "in" / "events.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"user": range(100), "item": range(100)}).to_parquet(path)
    path.write_bytes(path.read_bytes()[:-200])
    return table(ctx, path)


@case("table-parquet-missing-column", r"events\.parquet: no column 'item'", "columns found")
def _(ctx: Ctx) -> list[str]:
    path = ctx.tmp / "in" / "events.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"user": [1, 2], "sku": [3, 4]}).to_parquet(path)
    return table(ctx, path)


@case("table-plain-parquet-named-gz", r"events\.parquet\.gz: named \.gz but not gzip-compressed")
def _(ctx: Ctx) -> list[str]:
    path = ctx.tmp / "in" / "events.parquet.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"user": [1, 2], "item": [3, 4]}).to_parquet(path)
    return table(ctx, path)


@case("table-pickle-named-parquet", r"events\.parquet: not a readable Parquet file")
def _(ctx: Ctx) -> list[str]:
    return table(ctx, ctx.file("events.parquet", pickle.dumps(pd.DataFrame({"user": [1]}))))


@case("table-tsv-missing-value", r"events\.tsv, line 3", "column 'item'", "empty id")
def _(ctx: Ctx) -> list[str]:
    return table(ctx, ctx.file("events.tsv", "user\titem\n1\t2\n2\t\n"))


@case("table-unknown-suffix", r"events\.xlsx: unknown table format 'xlsx'", "expected a suffix")
def _(ctx: Ctx) -> list[str]:
    return table(ctx, ctx.file("events.xlsx", "user,item\n1,2\n"))


@case("table-bad-timestamp", r"events\.csv, line 3", "column 'ts'", "ISO-8601", "'yesterday'")
def _(ctx: Ctx) -> list[str]:
    path = ctx.file("events.csv", "user,item,ts\n1,2,2020-01-01\n1,3,yesterday\n")
    return table(ctx, path, "timestamp_col=ts")


@case("table-text-value", r"events\.csv, line 2", "column 'qty'", "expected a number", "'lots'")
def _(ctx: Ctx) -> list[str]:
    return table(ctx, ctx.file("events.csv", "user,item,qty\n1,2,lots\n"), "value_col=qty")


@case("table-binary-garbage", r"events\.csv, line 1: no column 'user'")
def _(ctx: Ctx) -> list[str]:
    return table(ctx, ctx.file("events.csv", bytes(range(256)) * 4))


@case("table-csv-nul-in-id", r"events\.csv, line 3", "column 'user'", r"NUL byte in the id '3\\x00'",
      "expected an integer or text id without NUL bytes")
def _(ctx: Ctx) -> list[str]:
    return table(ctx, ctx.file("events.csv", b"user,item\n1,2\n3\x00,4\n5,6\n"))


@case("table-csv-utf16", r"events\.csv: UTF-16 \(little-endian\) text \(byte-order mark FF FE\)",
      "expected UTF-8: re-encode it, e.g. iconv -f UTF-16 -t UTF-8")
def _(ctx: Ctx) -> list[str]:
    return table(ctx, ctx.file("events.csv", "user,item\n1,2\n3,4\n".encode("utf-16")))


@case("table-csv-latin1", r"events\.csv, line 3: not UTF-8 text \(bytes b'\\xe9'\)", "expected UTF-8")
def _(ctx: Ctx) -> list[str]:
    return table(ctx, ctx.file("events.csv", "user,item\nana,2\nj\xe9r\xf4me,4\n".encode("latin-1")))


@case("table-negative-values-without-threshold", r"events\.csv: 1 interaction\(s\) with a negative value",
      "user 2, item 7", "allow_negative")
def _(ctx: Ctx) -> list[str]:
    path = ctx.file("events.csv", "user,item,qty\n1,5,2\n2,7,-1\n")
    return [*table(ctx, path, "value_col=qty"), "--threshold", "none"]


@case("table-unknown-option", "unknown option", "colour", "expected some of user_col")
def _(ctx: Ctx) -> list[str]:
    return table(ctx, ctx.file("events.csv", "user,item\n1,2\n"), "colour=red")


# ================================================================== pipeline YAML
def pipeline(ctx: Ctx, text: str | bytes) -> list[str]:
    return ["run", str(ctx.file("pipeline.yaml", text)), "--no-track", "--quiet"]


def good_yaml(ctx: Ctx, **sections: str) -> str:
    """A valid pipeline whose outputs all go under ``ctx.out``, with ``sections`` replaced."""
    parts = {
        "name": "tiny",
        "data": f"{{source: movielens, path: {ctx.built['ratings']}, out: {ctx.out / 'ds'}}}",
        "models": "[{model: popularity}]",
        "output_dir": str(ctx.out / "runs"),
        **sections,
    }
    return "".join(f"{k}: {v}\n" for k, v in parts.items())


@case("yaml-syntax-error", r"pipeline\.yaml: line 3 invalid YAML")
def _(ctx: Ctx) -> list[str]:
    return pipeline(ctx, "name: tiny\ndata: [unclosed\nmodels: []\n")


@case("yaml-unknown-key", r"pipeline\.yaml: unknown key 'modells'", "expected one of data, models")
def _(ctx: Ctx) -> list[str]:
    return pipeline(ctx, good_yaml(ctx).replace("models:", "modells:"))


@case("yaml-binary-garbage", r"pipeline\.yaml:.*invalid YAML")
def _(ctx: Ctx) -> list[str]:
    return pipeline(ctx, b"name: \x00\x01\xff\xfe garbage\n")


@case("yaml-top-level-list", r"pipeline\.yaml: expected a mapping at the top level, got list")
def _(ctx: Ctx) -> list[str]:
    return pipeline(ctx, "- name: tiny\n")


@case("yaml-nan-threshold", r"pipeline\.yaml: data\.preprocess\.threshold: expected a finite number")
def _(ctx: Ctx) -> list[str]:
    data = f"{{source: movielens, path: {ctx.built['ratings']}, preprocess: {{threshold: .nan}}}}"
    return pipeline(ctx, good_yaml(ctx, data=data))


@case("yaml-negative-seed", r"pipeline\.yaml: data\.split\.seed: expected an integer in \[0, ")
def _(ctx: Ctx) -> list[str]:
    data = f"{{source: movielens, path: {ctx.built['ratings']}, split: {{seed: -1}}}}"
    return pipeline(ctx, good_yaml(ctx, data=data))


TWO_MODELS = "[{model: popularity}, {model: item-knn}]"


@case("ensemble-unknown-member", r"pipeline\.yaml: ensemble\.members: unknown member 'nope'",
      "expected models of this pipeline")
def _(ctx: Ctx) -> list[str]:
    return pipeline(ctx, good_yaml(ctx, models=TWO_MODELS, ensemble="{members: [popularity, nope]}"))


@case("ensemble-empty-members", r"pipeline\.yaml: ensemble\.members: the list is empty")
def _(ctx: Ctx) -> list[str]:
    return pipeline(ctx, good_yaml(ctx, models=TWO_MODELS, ensemble="{members: []}"))


@case("ensemble-of-one-model", r"pipeline\.yaml: ensemble\.members: an ensemble of one model", "two or more")
def _(ctx: Ctx) -> list[str]:
    return pipeline(ctx, good_yaml(ctx, models=TWO_MODELS, ensemble="{members: [item-knn]}"))


@case("ensemble-negative-weight", r"pipeline\.yaml: ensemble\.weights\.popularity: expected a weight ≥ 0")
def _(ctx: Ctx) -> list[str]:
    return pipeline(ctx, good_yaml(ctx, models=TWO_MODELS,
                                   ensemble="{weights: {popularity: -0.5, item-knn: 1.5}}"))


@case("ensemble-weights-not-summing-to-1", r"pipeline\.yaml: ensemble\.weights: the weights sum to 0\.6",
      "expected 1")
def _(ctx: Ctx) -> list[str]:
    return pipeline(ctx, good_yaml(ctx, models=TWO_MODELS,
                                   ensemble="{weights: {popularity: 0.3, item-knn: 0.3}}"))


@case("dry-run-storage-driver-missing", r"pipeline\.yaml: search\.storage: mysql://u:\*\*\*@db/optuna",
      "driver is not installed", "PyMySQL")
def _(ctx: Ctx) -> list[str]:
    yaml = good_yaml(ctx, models="[{model: ease, search: {l2: {low: 1.0, high: 100.0}}}]",
                     search="{storage: 'mysql://u:secret@db/optuna'}")
    return [*pipeline(ctx, yaml), "--dry-run"]


@case("dry-run-overridden-negative-trials",
      r"pipeline\.yaml: search\.trials: expected an integer ≥ 1, got -1")
def _(ctx: Ctx) -> list[str]:
    yaml = good_yaml(ctx, models="[{model: ease, trials: 3, search: {l2: {low: 1.0, high: 100.0}}}]",
                     search="{trials: -1}")
    return [*pipeline(ctx, yaml), "--dry-run"]


@case("yaml-recommend-batch-size-0", r"pipeline\.yaml: recommend\.batch_size: expected a positive integer")
def _(ctx: Ctx) -> list[str]:
    return pipeline(ctx, good_yaml(ctx, recommend="{batch_size: 0}"))


@case("yaml-model-param-type", r"pipeline\.yaml: models\[0\]\.params", "epochs", "positive integer")
def _(ctx: Ctx) -> list[str]:
    return pipeline(ctx, good_yaml(ctx, models="[{model: mult-vae, params: {epochs: sixty}}]"))


@case("train-params-file-bad-yaml", r"params\.yaml: line 2 invalid YAML", "hyper-parameters")
def _(ctx: Ctx) -> list[str]:
    return ctx.train("--model", "ease", "--params", str(ctx.file("params.yaml", "l2: 1\n  bad: [\n")))


@case("train-unknown-parameter", r"model 'ease'\.params: unknown parameter 'lambda' for ease",
      "expected one of")
def _(ctx: Ctx) -> list[str]:
    return ctx.train("--model", "ease", "--set", "lambda=3")


# ================================================================== saved models
def damaged_model(ctx: Ctx, key: str, damage: Callable[[Path], None]) -> list[str]:
    model = ctx.copy(key)
    damage(model)
    return ctx.recommend(model)


def edit_json(path: Path, **changes: object) -> None:
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(meta.get(key), dict):
            meta[key] = {**meta[key], **value}
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


@case("model-weights-truncated", r"weights\.npz: cannot read", "expected the weights of a mult-vae")
def _(ctx: Ctx) -> list[str]:
    def damage(m: Path) -> None:
        w = m / "weights.npz"
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])

    return damaged_model(ctx, "mult-vae", damage)


@case("model-weights-pickle", r"weights\.npz: refused: it holds pickled Python objects",
      "expected the weights")
def _(ctx: Ctx) -> list[str]:
    return damaged_model(ctx, "mult-vae", lambda m: (m / "weights.npz").write_bytes(
        pickle.dumps({"encoder.weight": [1.0, 2.0]})))


@case("model-weights-foreign-objects", r"weights\.npz: refused: it holds pickled Python objects")
def _(ctx: Ctx) -> list[str]:
    # a real .npz archive, but holding an object array that only a full unpickler would build
    return damaged_model(ctx, "mult-vae", lambda m: np.savez(
        m / "weights.npz", w=np.zeros(2), hook=np.array([pd.Timestamp(0)], dtype=object)))


@case("model-weights-other-shape", r"weights\.npz: weights do not match a mult-vae with \d+ items")
def _(ctx: Ctx) -> list[str]:
    return damaged_model(ctx, "mult-vae", lambda m: edit_json(
        m / "recvae_model.json", params={"hidden_dims": [32]}))


@case("model-json-unknown-parameter", r"recvae_model\.json: unknown parameter 'dropout_rate' for mult-vae")
def _(ctx: Ctx) -> list[str]:
    return damaged_model(ctx, "mult-vae", lambda m: edit_json(
        m / "recvae_model.json", params={"dropout_rate": 0.5}))


@case("model-json-wrong-model-type", r"B\.npy: no such file", "expected the ease state array")
def _(ctx: Ctx) -> list[str]:
    meta = {"model": "ease", "params": {"l2": 10.0}, "format": 1}
    return damaged_model(ctx, "mult-vae", lambda m: (m / "recvae_model.json").write_text(json.dumps(meta)))


@case("model-json-unknown-model", r"recvae_model\.json: unknown model 'mult-vea'", "expected one of")
def _(ctx: Ctx) -> list[str]:
    return damaged_model(ctx, "popularity", lambda m: edit_json(m / "recvae_model.json", model="mult-vea"))


@case("model-json-bad-value", r"recvae_model\.json: ease: l2 must be a finite number ≥ 0, got -1")
def _(ctx: Ctx) -> list[str]:
    return damaged_model(ctx, "ease", lambda m: edit_json(m / "recvae_model.json", params={"l2": -1}))


@case("model-json-not-json", r"recvae_model\.json: invalid JSON", "expected a recvae model description")
def _(ctx: Ctx) -> list[str]:
    return damaged_model(ctx, "popularity", lambda m: (m / "recvae_model.json").write_text("{model: x"))


@case("model-json-params-not-a-mapping", r"recvae_model\.json: params: expected a mapping")
def _(ctx: Ctx) -> list[str]:
    return damaged_model(ctx, "popularity", lambda m: edit_json(m / "recvae_model.json", params=[1]))


@case("model-state-array-pickled", r"B\.npy: refused: it holds pickled Python objects")
def _(ctx: Ctx) -> list[str]:
    return damaged_model(ctx, "ease", lambda m: (m / "B.npy").write_bytes(
        pickle.dumps(np.zeros((3, 3)))))


@case("model-state-array-object-dtype", r"counts\.npy: refused: it holds pickled Python objects")
def _(ctx: Ctx) -> list[str]:
    return damaged_model(ctx, "popularity", lambda m: np.save(
        m / "counts.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True))


@case("model-state-array-wrong-shape", r"B\.npy: float32 array of shape \(3, 3\)",
      r"expected floats of shape \(\d+, \d+\)")
def _(ctx: Ctx) -> list[str]:
    return damaged_model(ctx, "ease", lambda m: np.save(m / "B.npy", np.zeros((3, 3), np.float32)))


@case("model-items-truncated", r"items\.parquet: cannot read",
      "expected a Parquet file with a column 'item_id'")
def _(ctx: Ctx) -> list[str]:
    def damage(m: Path) -> None:
        p = m / "items.parquet"
        p.write_bytes(p.read_bytes()[:-100])

    return damaged_model(ctx, "popularity", damage)


@case("model-training-json-damaged", r"training\.json: expected 'history'")
def _(ctx: Ctx) -> list[str]:
    return damaged_model(ctx, "mult-vae", lambda m: (m / "training.json").write_text('{"history": 3}'))


@case("model-folder-is-not-a-model", r"not a saved recvae model \(no recvae_model\.json\)")
def _(ctx: Ctx) -> list[str]:
    return ctx.recommend(ctx.tmp / "in")


# ================================================================== dataset folders
def damaged_dataset(ctx: Ctx, damage: Callable[[Path], None], *extra: str) -> list[str]:
    ds = ctx.copy("dataset")
    damage(ds)
    return ctx.recommend(None, ds, *extra)


def refresh_manifest(ds: Path, name: str) -> None:
    """Make the manifest agree with a replaced file, as a careful forger would."""
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest["files"][name] = {"bytes": (ds / name).stat().st_size, "sha256": sha256_file(ds / name)}
    (ds / "manifest.json").write_text(json.dumps(manifest))


@case("dataset-train-npz-truncated", r"train\.npz: [\d,]+ bytes, the manifest records [\d,]+",
      "truncated or replaced", "re-ingest")
def _(ctx: Ctx) -> list[str]:
    def damage(ds: Path) -> None:
        f = ds / "train.npz"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    return damaged_dataset(ctx, damage)


@case("dataset-train-npz-modified", r"train\.npz: contents differ from the sha256 in the manifest")
def _(ctx: Ctx) -> list[str]:
    def damage(ds: Path) -> None:
        data = bytearray((ds / "train.npz").read_bytes())
        data[-200] ^= 0xFF  # same size, one byte flipped
        (ds / "train.npz").write_bytes(bytes(data))

    return damaged_dataset(ctx, damage)


@case("dataset-train-npz-truncated-and-forged", r"train\.npz: cannot read",
      "expected a file written by `recvae ingest`")
def _(ctx: Ctx) -> list[str]:
    def damage(ds: Path) -> None:
        f = ds / "train.npz"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        refresh_manifest(ds, "train.npz")

    return damaged_dataset(ctx, damage)


@case("dataset-pickle-as-npz", r"test_holdout\.npz: refused: it holds pickled Python objects")
def _(ctx: Ctx) -> list[str]:
    def damage(ds: Path) -> None:
        (ds / "test_holdout.npz").write_bytes(pickle.dumps({"indices": [1, 2]}))
        refresh_manifest(ds, "test_holdout.npz")

    return damaged_dataset(ctx, damage)


@case("dataset-pickle-as-npy", r"train_users\.npy: refused: it holds pickled Python objects")
def _(ctx: Ctx) -> list[str]:
    def damage(ds: Path) -> None:
        np.save(ds / "train_users.npy", np.array([object()] * 3), allow_pickle=True)
        refresh_manifest(ds, "train_users.npy")

    return damaged_dataset(ctx, damage)


@case("dataset-counts-edited",
      r"manifest\.json: counts\.train_interactions is \d+ but the dataset's arrays give \d+")
def _(ctx: Ctx) -> list[str]:
    def damage(ds: Path) -> None:
        manifest = json.loads((ds / "manifest.json").read_text())
        manifest["counts"]["train_interactions"] += 100
        (ds / "manifest.json").write_text(json.dumps(manifest))

    return damaged_dataset(ctx, damage)


@case("dataset-old-format", r"manifest\.json: dataset format 1, expected 3; re-ingest")
def _(ctx: Ctx) -> list[str]:
    return damaged_dataset(ctx, lambda ds: edit_json(ds / "manifest.json", format=1))


@case("dataset-missing-id-map", r"incomplete dataset, missing items\.parquet")
def _(ctx: Ctx) -> list[str]:
    return damaged_dataset(ctx, lambda ds: (ds / "items.parquet").unlink())


@case("dataset-manifest-not-json", r"manifest\.json: invalid JSON", "expected a recvae dataset manifest")
def _(ctx: Ctx) -> list[str]:
    return damaged_dataset(ctx, lambda ds: (ds / "manifest.json").write_bytes(b"\x89PNG\r\n"))


@case("dataset-users-out-of-range", r"dataset test_users: expected indices into the \d+ user ids")
def _(ctx: Ctx) -> list[str]:
    def damage(ds: Path) -> None:
        users = np.load(ds / "test_users.npy")
        users[0] = 10**6
        np.save(ds / "test_users.npy", users)
        refresh_manifest(ds, "test_users.npy")

    return damaged_dataset(ctx, damage)


@case("dataset-verify-flag", r"train\.npz: contents differ from the sha256 in the manifest")
def _(ctx: Ctx) -> list[str]:
    ds = ctx.copy("dataset")
    data = bytearray((ds / "train.npz").read_bytes())
    data[-100] ^= 0x01
    (ds / "train.npz").write_bytes(bytes(data))
    return ["evaluate-split", str(ds), "--verify"]


# ================================================================== numeric flags
FLAG_CASES = [
    ("recommend-batch-size-0", lambda c: c.recommend(None, None, "--batch-size", "0"),
     r"recommend: argument --batch-size: expected a positive integer, got '0'"),
    ("recommend-k-negative", lambda c: c.recommend(None, None, "--k", "-3"),
     r"recommend: argument --k: expected a positive integer, got '-3'"),
    ("recommend-format-unknown", lambda c: c.recommend(None, None, "--format", "xlsx"),
     r"recommend: argument --format: invalid choice: 'xlsx'"),
    ("evaluate-batch-size-0", lambda c: ["evaluate", str(c.built["ease"]), "--data",
                                         str(c.built["dataset"]), "--batch-size", "0"],
     r"evaluate: argument --batch-size: expected a positive integer"),
    ("evaluate-k-0", lambda c: ["evaluate", str(c.built["ease"]), "--data", str(c.built["dataset"]),
                                "--k", "20", "0"],
     r"evaluate: argument --k: expected a positive integer, got '0'"),
    ("train-epochs-0", lambda c: c.train("--model", "mult-vae", "--epochs", "0"),
     r"train: argument --epochs: expected a positive integer, got '0'"),
    ("train-epochs-text", lambda c: c.train("--model", "mult-vae", "--epochs", "ten"),
     r"train: argument --epochs: expected a positive integer, got 'ten'"),
    ("ingest-test-prop-above-1", lambda c: c.ingest("movielens", c.built["ratings"], "--test-prop", "1.5"),
     r"ingest: argument --test-prop: expected a number in \(0, 1\), got '1\.5'"),
    ("ingest-seed-negative", lambda c: c.ingest("movielens", c.built["ratings"], "--seed", "-1"),
     r"ingest: argument --seed: expected an integer in \[0, \d+\], got '-1'"),
    ("ingest-min-user-items-negative",
     lambda c: c.ingest("movielens", c.built["ratings"], "--min-user-items", "-2"),
     r"ingest: argument --min-user-items: expected an integer ≥ 0, got '-2'"),
    ("ingest-threshold-nan", lambda c: c.ingest("movielens", c.built["ratings"], "--threshold", "nan"),
     r"ingest: argument --threshold: expected a number, or 'none'"),
    ("ingest-cutoff-infinite",
     lambda c: c.ingest("movielens", c.built["ratings"], "--split", "temporal", "--cutoff", "inf"),
     r"ingest: argument --cutoff: expected a finite number, got 'inf'"),
    ("ingest-heldout-users-0",
     lambda c: c.ingest("movielens", c.built["ratings"], "--n-heldout-users", "0"),
     r"ingest: argument --n-heldout-users: expected a positive integer"),
    ("ui-port-out-of-range", lambda c: ["ui", "--port", "70000"],
     r"ui: argument --port: expected an integer in \[1, 65535\], got '70000'"),
    ("missing-required-flag", lambda c: ["recommend", str(c.built["ease"]), "--out", "x.csv"],
     r"recommend: the following arguments are required: --data"),
]
for _id, _build, _expect in FLAG_CASES:
    CASES.append(Case(f"flag-{_id}", _build, (_expect, r"\(see recvae \w+ --help\)")))


# ================================================================== outputs
@case("recommend-out-is-a-folder", r"recs\.parquet: cannot write", "is a folder; expected a file name")
def _(ctx: Ctx) -> list[str]:
    (ctx.out / "recs.parquet").mkdir(parents=True)
    return ctx.recommend()


@case("ingest-out-below-a-file", r"ds: cannot write", "a part of the path is a file|a file is in the way")
def _(ctx: Ctx) -> list[str]:
    blocker = ctx.file("blocker", "I am a file\n")
    return ["ingest", "--source", "movielens", "--path", str(ctx.built["ratings"]), "--out",
            str(blocker / "ds"), "--n-heldout-users", "10"]


@case("recommend-users-file-binary", r"users\.txt: not UTF-8 text", "expected one user id per line")
def _(ctx: Ctx) -> list[str]:
    return ctx.recommend(None, None, "--users", str(ctx.file("users.txt", b"\xff\xfe\x00u\x001")))


# ================================================================== run records (recvae sync)
def damaged_record(ctx: Ctx, line3: bytes) -> list[str]:
    """A finished run's record whose journal line 3 (of 5) is ``line3``; ``recvae sync`` of it
    into a store under ``out`` (which must stay uncreated: nothing may be sent)."""
    from recvae.tracking.record import JOURNAL_FILE, RunRecord

    runs = ctx.tmp / "in" / "runs"
    record = RunRecord.create(runs / "tracking", name="m", kind="model", uri=None, experiment="e")
    record.append({"op": "params", "params": {"a": "1"}})
    record.append({"op": "metrics", "metrics": {"test/ndcg_at_100": 0.3}, "step": 0, "time": 1})
    record.append({"op": "tags", "tags": {"b": "2"}})
    record.set_status("FINISHED")
    journal = record.path / JOURNAL_FILE
    lines = journal.read_bytes().split(b"\n")
    journal.write_bytes(b"\n".join([*lines[:2], line3, *lines[3:]]))
    return ["sync", str(runs), "--tracking-uri", f"sqlite:///{ctx.out / 'mlflow.db'}"]


@case("sync-journal-line-not-utf8", r"journal\.jsonl, line 3: not UTF-8 text \(byte 0xff at column 19\)",
      "expected one JSON journal entry per line")
def _(ctx: Ctx) -> list[str]:
    return damaged_record(ctx, b'{"seq": 3, "op": "\xffmetrics"}')


@case("sync-journal-line-not-json", r"journal\.jsonl, line 3: not JSON \(Expecting value at column 1\)",
      "expected one JSON journal entry per line")
def _(ctx: Ctx) -> list[str]:
    return damaged_record(ctx, b"<<<<<<< HEAD")


@case("sync-journal-entry-without-fields", r"journal\.jsonl, line 3: a 'metrics' entry without step, time",
      "expected one JSON journal entry per line")
def _(ctx: Ctx) -> list[str]:
    return damaged_record(ctx, b'{"seq": 3, "op": "metrics", "metrics": {}}')


# ------------------------------------------------------------------ the runner
def assert_one_line_error(code: int, out: str, err: str, patterns: tuple[str, ...]) -> str:
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in out + err, err
    assert err.startswith("recvae: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    line = err.rstrip("\n")
    for p in patterns:
        assert re.search(p, line), f"{p!r} not in {line!r}"
    return line


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line(
    bad: Case, built: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ctx = Ctx(tmp_path, built)
    argv = bad.build(ctx)
    before = entries(ctx.out)
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert_one_line_error(code, out, err, bad.expect)
    assert entries(ctx.out) == before, "partial output left behind"
    assert temporaries(tmp_path) == []


def test_corpus_size() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


# ------------------------------------------------------------------ unwritable outputs
@pytest.mark.parametrize("command", ["ingest", "recommend", "train"])
def test_read_only_output_folder(
    command: str, built: dict[str, Path], read_only_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    target = read_only_dir / "outputs"
    argv = {
        "ingest": ["ingest", "--source", "movielens", "--path", str(built["ratings"]), "--out",
                   str(target / "ds"), "--n-heldout-users", "10"],
        "recommend": ["recommend", str(built["popularity"]), "--data", str(built["dataset"]),
                      "--out", str(target / "recs.csv"), "--quiet"],
        "train": ["train", "--data", str(built["dataset"]), "--model", "popularity", "--out",
                  str(target / "model"), "--no-track", "--quiet"],
    }[command]
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert_one_line_error(
        code, out if command != "train" else "", err,
        (r"outputs/\S*: cannot write", "read-only file system|permission denied"),
    )
    assert list(read_only_dir.iterdir()) == []


# ------------------------------------------------------------------ a journal cut short
def test_sync_of_a_journal_cut_short_warns_in_one_line_and_sends_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Not an error: a process killed while writing its last journal line. One warning line
    naming the file and the line, no traceback, exit 0, the entries before it in the store."""
    from mlflow.tracking import MlflowClient

    from recvae.tracking.record import JOURNAL_FILE, RunRecord

    runs = tmp_path / "runs"
    record = RunRecord.create(runs / "tracking", name="m", kind="model", uri=None, experiment="e")
    record.append({"op": "params", "params": {"a": "1"}})
    record.set_status("FINISHED")
    journal = record.path / JOURNAL_FILE
    with journal.open("ab") as f:
        f.write(b'{"seq": 4, "op": "metrics", "metrics": {"test/nd')
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    capsys.readouterr()
    assert main(["sync", str(runs), "--tracking-uri", uri]) == 0
    out, err = capsys.readouterr()
    assert err == (f"recvae: warning: {journal}, line 4: cut short (its process was killed while "
                   "writing it); that entry is skipped\n")
    assert "Traceback" not in out and "1 run(s) synced" in out
    run = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("e").experiment_id])[0]
    assert run.data.params == {"a": "1"} and run.info.status == "FINISHED"


# ------------------------------------------------------------------ serving (mlflow models serve)
@pytest.fixture(scope="module")
def scoring_server(built: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MLflow's scoring server (the app ``mlflow models serve`` runs) for the built EASE model
    as recvae logs it (the pyfunc from code), on a loopback port in this process."""
    import mlflow.pyfunc
    import uvicorn
    from mlflow.pyfunc import scoring_server as mlflow_scoring

    from recvae.models import load_model
    from recvae.pyfunc import MODEL_DIR_ARTIFACT
    from recvae.tracking.logged_model import MODEL_CODE, signature
    from tests.servers import free_port

    items = np.asarray(load_model(built["ease"]).item_ids_)[:3]
    path = tmp_path_factory.mktemp("served") / "model"
    mlflow.pyfunc.save_model(
        str(path), python_model=str(MODEL_CODE), artifacts={MODEL_DIR_ARTIFACT: str(built["ease"])},
        signature=signature(10), pip_requirements=["recvae"],
        input_example=pd.DataFrame({"user_id": [1, 1, 1], "item_id": items.tolist()}),
    )
    app = mlflow_scoring.init(mlflow.pyfunc.load_model(str(path)))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/ping", timeout=1):
            break
        time.sleep(0.1)
    yield url
    server.should_exit = True
    thread.join(timeout=10)


def invoke(url: str, k: object) -> tuple[int, dict]:
    """POST two users' histories with ``params: {k}``; the status and the JSON answer."""
    body = {"dataframe_split": {"columns": ["user_id", "item_id"], "data": [[1, 5], [1, 16], [2, 27]]},
            "params": {"k": k}}
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("k", [-3, 0])
def test_serving_a_bad_k_is_http_400_with_one_line(scoring_server: str, k: int) -> None:
    status, answer = invoke(scoring_server, k)
    assert status == 400, answer
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert answer["message"] == (
        f"params.k: expected a positive integer (the number of items per user), got {k}")
    assert "stack_trace" not in answer and "Traceback" not in json.dumps(answer)
    status, answer = invoke(scoring_server, 2)  # the server goes on serving
    assert status == 200 and len(answer["predictions"]) == 4
