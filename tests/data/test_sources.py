"""Tests for recvae.data.sources: each reader on small files in the real formats and its errors."""

from __future__ import annotations

import gzip
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recvae.data.sources import (
    SOURCES,
    read_citeulike,
    read_lightgcn,
    read_movielens,
    read_msd,
    read_netflix,
    read_source,
    read_table,
)
from recvae.errors import RecvaeError

SHARED = Path(__file__).parents[2].parent / "shared" / "data"

ML_CSV = "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n7,31,4.5,1\n"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def make_zip(path: Path, members: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return path


def raises(match: str):
    """pytest.raises(RecvaeError) whose one-line message matches ``match`` (a regex)."""
    return pytest.raises(RecvaeError, match=match)


def assert_one_line(err: pytest.ExceptionInfo) -> None:
    assert "\n" not in str(err.value)


def expected_ml() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user": np.array([1, 1, 7], dtype=np.int64),
            "item": np.array([31, 1029, 31], dtype=np.int64),
            "value": [2.5, 3.0, 4.5],
            "timestamp": np.array([1260759144, 1260759179, 1], dtype=np.int64),
        }
    )


# =========================================================================== MovieLens
class TestMovieLens:
    def test_ratings_csv_file_folder_and_zip(self, tmp_path):
        csv = write(tmp_path / "ml-20m" / "ratings.csv", ML_CSV)
        z = make_zip(
            tmp_path / "ml-20m.zip",
            {"ml-20m/": "", "ml-20m/movies.csv": "x", "ml-20m/ratings.csv": ML_CSV},
        )
        for path in (csv, csv.parent, z):
            pd.testing.assert_frame_equal(read_movielens(path), expected_ml())

    def test_folder_holding_only_the_zip(self, tmp_path):
        make_zip(tmp_path / "d" / "ml-latest-small.zip", {"ml-latest-small/ratings.csv": ML_CSV})
        pd.testing.assert_frame_equal(read_movielens(tmp_path / "d"), expected_ml())

    def test_ml100k_u_data(self, tmp_path):
        text = "1\t31\t2\t1260759144\n1\t1029\t3\t1260759179\n7\t31\t4\t1\n"
        folder = tmp_path / "ml-100k"
        write(folder / "u.data", text)
        write(folder / "u1.base", "junk")
        df = read_movielens(folder)
        assert df["value"].tolist() == [2.0, 3.0, 4.0]
        assert df["user"].tolist() == [1, 1, 7]
        z = make_zip(tmp_path / "ml-100k.zip", {"ml-100k/u1.base": "x", "ml-100k/u.data": text})
        pd.testing.assert_frame_equal(read_movielens(z), df)

    def test_ml1m_and_ml10m_dat(self, tmp_path):
        text = "1::31::2.5::1260759144\n1::1029::3::1260759179\n7::31::4.5::1\n"
        write(tmp_path / "ml-1m" / "ratings.dat", text)
        pd.testing.assert_frame_equal(read_movielens(tmp_path / "ml-1m"), expected_ml())
        z = make_zip(
            tmp_path / "ml-10m.zip",
            {"ml-10M100K/movies.dat": "1::A::B\n", "ml-10M100K/ratings.dat": text},
        )
        pd.testing.assert_frame_equal(read_movielens(z), expected_ml())
        pd.testing.assert_frame_equal(
            read_movielens(tmp_path / "ml-1m" / "ratings.dat"), expected_ml()
        )

    def test_crlf_and_trailing_blank_lines(self, tmp_path):
        f = write(tmp_path / "ratings.csv", ML_CSV.replace("\n", "\r\n") + "\r\n\n")
        pd.testing.assert_frame_equal(read_movielens(f), expected_ml())

    def test_bad_value_names_file_line_and_column(self, tmp_path):
        f = write(tmp_path / "ratings.csv", ML_CSV + "\n\n8,40,four,5\n")
        with raises(r"ratings\.csv, line 7, column 'rating': expected a number, got 'four'") as e:
            read_movielens(f)
        assert_one_line(e)

    def test_bad_value_inside_zip(self, tmp_path):
        z = make_zip(tmp_path / "ml.zip", {"ml/ratings.csv": ML_CSV + "8,4x,4,5\n"})
        with raises(
            r"ml\.zip:ml/ratings\.csv, line 5, column 'movieId': expected an integer, got '4x'"
        ):
            read_movielens(z)

    def test_bad_dat_separator(self, tmp_path):
        f = write(tmp_path / "ratings.dat", "1::2::3::4\n5:6::7::8::9\n")
        with raises(r"ratings\.dat, line 2.*UserID::MovieID::Rating::Timestamp"):
            read_movielens(f)
        f = write(tmp_path / "ratings.dat", "1::2::3::4\n5:x:6::7::8\n")
        with raises(r"ratings\.dat, line 2, column ':1': expected '::' between fields, got 'x'"):
            read_movielens(f)

    def test_truncated_last_line(self, tmp_path):
        f = write(tmp_path / "ratings.csv", ML_CSV + "9,10")
        with raises(
            r"ratings\.csv, line 5: expected userId,movieId,rating,timestamp .*got 2 field"
        ):
            read_movielens(f)

    def test_missing_value(self, tmp_path):
        f = write(tmp_path / "ratings.csv", ML_CSV + "9,10,,5\n")
        with raises(r"ratings\.csv, line 5, column 'rating': missing value"):
            read_movielens(f)

    def test_non_finite_rating(self, tmp_path):
        f = write(tmp_path / "ratings.csv", ML_CSV + "9,10,nan,5\n")
        with raises(r"ratings\.csv, line 5, column 'rating': expected a finite number"):
            read_movielens(f)

    def test_wrong_header_lists_columns(self, tmp_path):
        f = write(tmp_path / "ratings.csv", "userId,itemId,rating,timestamp\n1,2,3,4\n")
        with raises(
            r"ratings\.csv, line 1: expected the header .*found columns \['userId', 'itemId'"
        ):
            read_movielens(f)

    def test_missing_empty_and_unknown(self, tmp_path):
        with raises(r"nope\.zip: no such file or folder"):
            read_movielens(tmp_path / "nope.zip")
        with raises(r"ratings\.csv: empty file"):
            read_movielens(write(tmp_path / "ratings.csv", ""))
        with raises(r"ratings\.csv: empty file"):
            read_movielens(write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n"))
        with raises(r"x\.txt, line 1: not MovieLens ratings"):
            read_movielens(write(tmp_path / "x.txt", "hello world\n"))
        (tmp_path / "empty").mkdir()
        with raises(r"empty: expected one MovieLens ratings file .* found none"):
            read_movielens(tmp_path / "empty")

    def test_corrupt_zip_and_zip_without_ratings(self, tmp_path):
        with raises(r"bad\.zip: not a valid zip file"):
            read_movielens(write(tmp_path / "bad.zip", b"PK\x03\x04 not really a zip"))
        z = make_zip(tmp_path / "other.zip", {"ml/movies.csv": "movieId,title\n"})
        with raises(
            r"other\.zip: the zip holds no MovieLens ratings file .*members: ml/movies\.csv"
        ):
            read_movielens(z)

    def test_corrupt_member_data(self, tmp_path):
        z = tmp_path / "ml.zip"
        with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("ml/ratings.csv", ML_CSV)
        data = z.read_bytes()
        z.write_bytes(data.replace(b"1,1029,3.0", b"1,1039,3.0", 1))  # the CRC no longer matches
        with raises(r"ml\.zip: corrupt zip, cannot read ml/ratings\.csv \(Bad CRC-32"):
            read_movielens(z)

    def test_real_ml_latest_small(self):
        z = SHARED / "ml-latest-small" / "ml-latest-small.zip"
        if not z.is_file():
            pytest.skip(f"shared data not found: {z}")
        df = read_movielens(z)
        assert len(df) == 100_836
        assert df["user"].nunique() == 610
        assert df["item"].nunique() == 9_724
        assert list(df.columns) == ["user", "item", "value", "timestamp"]
        assert df["value"].between(0.5, 5.0).all()
        assert len(read_movielens(z.parent)) == 100_836


# =========================================================================== Netflix
def netflix_files(root: Path) -> Path:
    ts = root / "training_set"
    write(ts / "mv_0000001.txt", "1:\n1488844,3,2005-09-06\n822109,5,2005-05-13\n")
    write(ts / "mv_0000002.txt", "2:\r\n2059652,4,2005-09-05\r\n")
    write(ts / "mv_0000003.txt", "3:\n")
    write(ts / "mv_0000010.txt", "10:\n1488844,1,2000-01-01")  # no final newline
    return ts


NETFLIX_EXPECTED = pd.DataFrame(
    {
        "user": np.array([1488844, 822109, 2059652, 1488844], dtype=np.int64),
        "item": np.array([1, 1, 2, 10], dtype=np.int64),
        "value": [3.0, 5.0, 4.0, 1.0],
        "timestamp": pd.to_datetime(["2005-09-06", "2005-05-13", "2005-09-05", "2000-01-01"])
        .as_unit("s")
        .asi8,
    }
)


class TestNetflix:
    def test_training_set_folder_and_parent(self, tmp_path):
        ts = netflix_files(tmp_path)
        pd.testing.assert_frame_equal(read_netflix(ts), NETFLIX_EXPECTED)
        pd.testing.assert_frame_equal(read_netflix(tmp_path), NETFLIX_EXPECTED)

    def test_combined_data(self, tmp_path):
        write(
            tmp_path / "combined_data_1.txt", "1:\n1488844,3,2005-09-06\n822109,5,2005-05-13\n2:\n"
        )
        write(
            tmp_path / "combined_data_2.txt",
            "2:\n2059652,4,2005-09-05\n3:\n10:\n1488844,1,2000-01-01\n",
        )
        pd.testing.assert_frame_equal(read_netflix(tmp_path), NETFLIX_EXPECTED)
        one = read_netflix(tmp_path / "combined_data_2.txt")
        assert one["item"].tolist() == [2, 10]

    def test_many_files_in_several_batches(self, tmp_path, monkeypatch):
        import recvae.data.sources.netflix as sources

        ts = netflix_files(tmp_path)
        original = sources._netflix_batches
        monkeypatch.setattr(
            sources, "_netflix_batches", lambda files: original(files, max_bytes=40)
        )
        pd.testing.assert_frame_equal(read_netflix(ts), NETFLIX_EXPECTED)

    def test_bad_rating_names_the_right_file_and_line(self, tmp_path):
        ts = netflix_files(tmp_path)
        write(ts / "mv_0000002.txt", "2:\n2059652,4,2005-09-05\n1,x,2005-09-05\n")
        with raises(r"mv_0000002\.txt, line 3, column 'rating': expected a number, got 'x'"):
            read_netflix(ts)

    def test_bad_date_and_short_line(self, tmp_path):
        f = write(tmp_path / "combined_data_1.txt", "1:\n5,3,2005-09-06\n2:\n6,4,2005-13-06\n")
        with raises(r"combined_data_1\.txt, line 4, column 'date': expected a date YYYY-MM-DD"):
            read_netflix(f)
        f = write(tmp_path / "combined_data_1.txt", "1:\n5,3,2005-09-06\n6,4\n")
        with raises(r"combined_data_1\.txt, line 3: expected CustomerID,Rating,YYYY-MM-DD"):
            read_netflix(f)

    def test_missing_value(self, tmp_path):
        f = write(
            tmp_path / "combined_data_1.txt",
            "1:\n5,3,2005-09-06\n2:\n6,4,2005-09-06\n7,,2005-09-06\n",
        )
        with raises(r"combined_data_1\.txt, line 5, column 'rating': missing value"):
            read_netflix(f)

    def test_structure_errors(self, tmp_path):
        ts = netflix_files(tmp_path)
        write(ts / "mv_0000003.txt", "5,3,2005-09-06\n")
        with raises(r"mv_0000003\.txt, line 1: expected the first line to be 'MOVIEID:'"):
            read_netflix(ts)
        f = write(tmp_path / "c" / "combined_data_1.txt", "1:\n5,3,2005-09-06\n12a:\n")
        with raises(r"combined_data_1\.txt, line 3: expected 'MOVIEID:' or CustomerID,Rating,Date"):
            read_netflix(f)
        f = write(tmp_path / "c" / "combined_data_1.txt", "1:\n5,3,2005-09-06\n\n6,3,2005-09-06\n")
        with raises(r"combined_data_1\.txt, line 3: blank line"):
            read_netflix(f)
        f = write(tmp_path / "c" / "combined_data_1.txt", "\n\n")
        with raises(r"combined_data_1\.txt: empty file"):
            read_netflix(f)
        with raises(r"nowhere: no such file or folder"):
            read_netflix(tmp_path / "nowhere")
        (tmp_path / "void").mkdir()
        with raises(r"void: no Netflix files"):
            read_netflix(tmp_path / "void")
        write(tmp_path / "both" / "mv_0000001.txt", "1:\n")
        write(tmp_path / "both" / "combined_data_1.txt", "1:\n")
        with raises(r"both: holds both mv_\*\.txt and combined_data_\*\.txt"):
            read_netflix(tmp_path / "both")


# =========================================================================== MSD
class TestMSD:
    def test_triplets_plain_and_gz(self, tmp_path):
        text = (
            "b80344d063b5ccb3212f76538f3d9e43d87dca9e\tSOAKIMP12A8C130995\t1\n"
            "b80344d063b5ccb3212f76538f3d9e43d87dca9e\tSOAPDEY12A81C210A9\t12\n"
            "85c1f87fea955d09b4bec2e36aee110927aab126\tSOAKIMP12A8C130995\t2\n"
        )
        plain = write(tmp_path / "train_triplets.txt", text)
        gz = write(tmp_path / "train_triplets.txt.gz", gzip.compress(text.encode()))
        for f in (plain, gz):
            df = read_msd(f)
            assert df["value"].tolist() == [1.0, 12.0, 2.0]
            assert df["item"].tolist()[1] == "SOAPDEY12A81C210A9"
            assert pd.api.types.is_string_dtype(df["user"]) and df["value"].dtype == np.float64
            assert list(df.columns) == ["user", "item", "value"]

    def test_errors(self, tmp_path):
        f = write(tmp_path / "t.txt", "u1\ts1\t1\nu1\ts2\tmany\n")
        with raises(r"t\.txt, line 2, column 'play_count': expected an integer, got 'many'"):
            read_msd(f)
        f = write(tmp_path / "t.txt", "u1\ts1\t1\nu1 s2 3\n")
        with raises(r"t\.txt, line 2: expected user<TAB>song<TAB>play_count"):
            read_msd(f)
        f = write(tmp_path / "t.txt", "u1\ts1\t1\n\ts2\t3\n")
        with raises(r"t\.txt, line 2, column 'user': empty id"):
            read_msd(f)
        with raises(r"t\.txt: empty file"):
            read_msd(write(tmp_path / "t.txt", ""))


# =========================================================================== LightGCN
def lightgcn_dir(root: Path, with_lists: bool = True) -> Path:
    write(root / "train.txt", "0 0 1 2\n1 2\n2\n")
    write(root / "test.txt", "0 3\n1 0 1\n")
    if with_lists:
        write(root / "user_list.txt", "org_id remap_id\n343 0\n5258 1\n70 2\n")
        write(root / "item_list.txt", "org_id remap_id\nA 0\nB 1\nC 2\nD 3\n")
    return root


class TestLightGCN:
    def test_ids_mapped_back_and_parts(self, tmp_path):
        df = read_lightgcn(lightgcn_dir(tmp_path))
        assert df["user"].tolist() == [343, 343, 343, 5258, 343, 5258, 5258]
        assert df["item"].tolist() == ["A", "B", "C", "C", "D", "A", "B"]
        assert df["part"].tolist() == ["train"] * 4 + ["test"] * 3
        assert (df["value"] == 1.0).all() and df["user"].dtype == np.int64

    def test_without_lists_keeps_remapped_ids(self, tmp_path):
        df = read_lightgcn(lightgcn_dir(tmp_path, with_lists=False))
        assert df["user"].tolist() == [0, 0, 0, 1, 0, 1, 1]
        assert df["item"].tolist() == [0, 1, 2, 2, 3, 0, 1]

    def test_errors(self, tmp_path):
        root = lightgcn_dir(tmp_path)
        write(root / "test.txt", "0 3\n1 0 x1\n")
        with raises(r"test\.txt, line 2: expected .*non-negative integers.*got 'x1'"):
            read_lightgcn(root)
        write(root / "test.txt", "0 3\n1 0 9\n")
        with raises(r"test\.txt, line 2: item 9 is not in item_list\.txt"):
            read_lightgcn(root)
        write(root / "test.txt", "")
        with raises(r"test\.txt: empty file"):
            read_lightgcn(root)
        (root / "test.txt").unlink()
        with raises(r"test\.txt: no such file; a LightGCN folder needs train\.txt and test\.txt"):
            read_lightgcn(root)
        write(root / "test.txt", "0 1\n")
        write(root / "user_list.txt", "id remap\n1 0\n")
        with raises(r"user_list\.txt, line 1: expected the header 'org_id remap_id'"):
            read_lightgcn(root)
        write(root / "user_list.txt", "org_id remap_id\n1 0\n2 zero\n")
        with raises(r"user_list\.txt, line 3, column 'remap_id': expected an integer"):
            read_lightgcn(root)
        with raises(r"train\.txt: not a folder"):
            read_lightgcn(root / "train.txt")

    def test_real_gowalla(self):
        root = SHARED / "gowalla"
        if not (root / "train.txt").is_file():
            pytest.skip(f"shared data not found: {root}")
        df = read_lightgcn(root)
        counts = df["part"].value_counts()
        assert counts["train"] == 810_128 and counts["test"] == 217_242
        assert df["user"].nunique() == 29_858 and df["item"].nunique() == 40_981
        # remapped user 0 is original user 343, remapped item 0 is original item 8975
        assert df["user"].iloc[0] == 343 and df["item"].iloc[0] == 8975


# =========================================================================== citeulike
class TestCiteULike:
    def test_users_dat(self, tmp_path):
        df = read_citeulike(write(tmp_path / "users.dat", "3 5 6 7\n0\n1 5"))
        assert df["user"].tolist() == [0, 0, 0, 2]
        assert df["item"].tolist() == [5, 6, 7, 5]
        assert (df["value"] == 1.0).all()

    def test_errors(self, tmp_path):
        with raises(r"users\.dat, line 2: the count is 3 but the line lists 2 article id\(s\)"):
            read_citeulike(write(tmp_path / "users.dat", "1 5\n3 1 2\n"))
        with raises(r"users\.dat, line 2: empty line"):
            read_citeulike(write(tmp_path / "users.dat", "1 5\n\n1 3\n"))
        with raises(r"users\.dat, line 1: expected .* got '5\.0'"):
            read_citeulike(write(tmp_path / "users.dat", "1 5.0\n"))
        with raises(r"users\.dat: empty file"):
            read_citeulike(write(tmp_path / "users.dat", ""))

    def test_real_citeulike(self):
        f = SHARED / "citeulike-a" / "users.dat"
        if not f.is_file():
            pytest.skip(f"shared data not found: {f}")
        df = read_citeulike(f)
        assert len(df) == 204_986
        assert df["user"].nunique() == 5_551 and df["item"].nunique() == 16_980


# =========================================================================== generic tables
TABLE = pd.DataFrame(
    {
        "uid": ["u1", "u2", "u1"],
        "sku": [10, 20, 30],
        "qty": [1.5, 2.0, 3.0],
        "ts": [100, 200, 300],
        "other": ["a", "b", "c"],
    }
)


class TestTable:
    @pytest.mark.parametrize(
        "name", ["t.csv", "t.csv.gz", "t.tsv", "t.tsv.gz", "t.txt", "t.parquet", "t.parquet.gz"]
    )
    def test_formats(self, tmp_path, name):
        path = tmp_path / name
        if ".parquet" in name:
            TABLE.to_parquet(tmp_path / "plain.parquet", index=False)
            data = (tmp_path / "plain.parquet").read_bytes()
            write(path, gzip.compress(data) if name.endswith(".gz") else data)
        else:
            sep = "," if ".csv" in name else "\t"
            TABLE.to_csv(path, sep=sep, index=False)
        df = read_table(path, user_col="uid", item_col="sku", value_col="qty", timestamp_col="ts")
        assert list(df.columns) == ["user", "item", "value", "timestamp"]
        assert df["user"].tolist() == ["u1", "u2", "u1"]
        assert df["item"].tolist() == [10, 20, 30] and df["item"].dtype == np.int64
        assert df["value"].tolist() == [1.5, 2.0, 3.0]
        assert df["timestamp"].tolist() == [100, 200, 300] and df["timestamp"].dtype == np.int64

    def test_defaults_value_one_and_format_and_sep_options(self, tmp_path):
        f = write(tmp_path / "events.dat", "user;item\n1;007\n2;8\n")
        df = read_table(f, sep=";", format="csv")
        assert df["value"].tolist() == [1.0, 1.0] and "timestamp" not in df
        assert df["user"].tolist() == [1, 2]
        assert df["item"].tolist() == ["007", "8"]  # "007" is not a canonical integer: kept as text

    def test_iso_timestamps(self, tmp_path):
        f = write(tmp_path / "t.csv", "user,item,when\n1,2,2005-09-06\n1,3,2005-09-06T01:00:00Z\n")
        df = read_table(f, timestamp_col="when")
        assert df["timestamp"].tolist() == [1125964800, 1125968400]
        f = write(tmp_path / "t.csv", "user,item,when\n1,2,2005-09-06\n1,3,yesterday\n")
        with raises(r"t\.csv, line 3, column 'when': expected epoch seconds or an ISO-8601"):
            read_table(f, timestamp_col="when")

    def test_parquet_native_types(self, tmp_path):
        df = pd.DataFrame(
            {
                "user": np.array([5, 6], dtype=np.int32),
                "item": pd.Categorical(["x", "y"]),
                "when": pd.to_datetime(["2005-09-06", "2005-09-07"]),
            }
        )
        df.to_parquet(tmp_path / "t.parquet", index=False)
        out = read_table(tmp_path / "t.parquet", timestamp_col="when")
        assert out["user"].dtype == np.int64 and out["item"].tolist() == ["x", "y"]
        assert out["timestamp"].tolist() == [1125964800, 1126051200]

    def test_errors(self, tmp_path):
        f = write(tmp_path / "t.csv", "user,item,rating\n1,2,3\n\n4,5,high\n")
        with raises(r"t\.csv, line 4, column 'rating': expected a number, got 'high'") as e:
            read_table(f, value_col="rating")
        assert_one_line(e)
        with raises(
            r"t\.csv, line 1: no column 'score'; columns found: \['user', 'item', 'rating'\]"
        ):
            read_table(f, value_col="score")
        f = write(tmp_path / "t.tsv", "user,item\n1,2\n")
        with raises(
            r"t\.tsv, line 1: no column 'user'; columns found: \['user,item'\] \(a single column"
        ):
            read_table(f)
        f = write(tmp_path / "t.csv", "user,item,rating\n1,2,3\n4,,5\n")
        with raises(r"t\.csv, line 3, column 'item': empty id"):
            read_table(f, value_col="rating")
        f = write(tmp_path / "t.csv", "user,item,rating\n1,2,3\n4,5,\n")
        with raises(r"t\.csv, line 3, column 'rating': missing value"):
            read_table(f, value_col="rating")
        with raises(r"t\.csv: empty file"):
            read_table(write(tmp_path / "t.csv", ""))
        with raises(r"t\.csv: empty file"):
            read_table(write(tmp_path / "t.csv", "user,item\n"))
        with raises(r"t\.json: unknown table format 'json'"):
            read_table(write(tmp_path / "t.json", "{}"))
        with raises(r"unknown table format 'xlsx'"):
            read_table(f, format="xlsx")
        with raises(r"sep must be a single character"):
            read_table(f, sep="::")
        with raises(r"gone\.csv: no such file or folder"):
            read_table(tmp_path / "gone.csv")
        with raises(r"t\.parquet: not a readable Parquet file"):
            read_table(write(tmp_path / "t.parquet", b"not parquet"))
        pd.DataFrame({"user": [1], "item": [2], "v": ["x"]}).to_parquet(tmp_path / "p.parquet")
        with raises(r"p\.parquet, row 1, column 'v': expected a number, got 'x'"):
            read_table(tmp_path / "p.parquet", value_col="v")
        with raises(r"p\.parquet: no column 'w'; columns found: \['user', 'item', 'v'\]"):
            read_table(tmp_path / "p.parquet", value_col="w")

    @settings(
        max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(
        ids=st.lists(
            st.text(
                st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=8
            ),
            min_size=1,
            max_size=20,
        ),
        as_parquet=st.booleans(),
    )
    def test_string_ids_round_trip(self, tmp_path, ids, as_parquet):
        frame = pd.DataFrame(
            {"user": ids, "item": list(reversed(ids)), "value": np.arange(len(ids)) / 3}
        )
        path = tmp_path / ("ids.parquet" if as_parquet else "ids.csv")
        if as_parquet:
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        out = read_table(path, value_col="value")

        def expected(values: list[str]) -> list:
            canonical = all(re.fullmatch(r"0|-?[1-9][0-9]{0,17}", v) for v in values)
            return [int(v) for v in values] if canonical else values

        assert out["user"].tolist() == expected(ids)
        assert out["item"].tolist() == expected(list(reversed(ids)))
        assert out["value"].tolist() == frame["value"].tolist()


# =========================================================================== dispatch
class TestReadSource:
    def test_dispatch(self, tmp_path):
        f = write(tmp_path / "ratings.csv", ML_CSV)
        pd.testing.assert_frame_equal(read_source("movielens", f), expected_ml())
        df = read_source("table", f, user_col="userId", item_col="movieId", value_col="rating")
        assert df["value"].tolist() == [2.5, 3.0, 4.5]
        assert tuple(SOURCES) == ("movielens", "netflix", "msd", "lightgcn", "citeulike", "table")

    def test_errors(self, tmp_path):
        with raises(r"unknown source 'imdb': expected one of movielens, netflix"):
            read_source("imdb", tmp_path)
        with raises(r"source 'movielens' takes no options, got sep"):
            read_source("movielens", tmp_path, sep=",")
        with raises(r"unknown option\(s\) user_column for source 'table'"):
            read_source("table", tmp_path, user_column="u")


# =========================================================================== byte-order marks
BOM = b"\xef\xbb\xbf"


class TestByteOrderMark:
    """Excel's "CSV UTF-8" starts with a BOM: the header's first column must still be found."""

    def test_table_csv_and_gz(self, tmp_path):
        text = BOM + b"user,item,qty\nu1,10,2\nu2,20,1\n"
        for path in (write(tmp_path / "t.csv", text), write(tmp_path / "t.csv.gz", gzip.compress(text))):
            df = read_table(path, value_col="qty")
            assert df["user"].tolist() == ["u1", "u2"] and df["value"].tolist() == [2.0, 1.0]

    def test_movielens_ratings_csv(self, tmp_path):
        df = read_movielens(write(tmp_path / "ratings.csv", BOM + ML_CSV.encode()))
        pd.testing.assert_frame_equal(df, expected_ml())

    def test_netflix(self, tmp_path):
        write(tmp_path / "mv_0000001.txt", BOM + b"1:\n1488844,3,2005-09-06\n")
        assert read_netflix(tmp_path)["user"].tolist() == [1488844]

    def test_line_numbers_still_count_the_first_line(self, tmp_path):
        path = write(tmp_path / "t.csv", BOM + b"user,item,qty\nu1,10,2\nu2,20,x\n")
        with raises(r"t\.csv, line 3, column 'qty': expected a number, got 'x'"):
            read_table(path, value_col="qty")


class TestCompressedInputs:
    def test_plain_file_named_gz(self, tmp_path):
        path = write(tmp_path / "t.csv.gz", "user,item\n1,2\n")
        with raises(r"t\.csv\.gz: named \.gz but not gzip-compressed \(it starts with b'us'\)") as err:
            read_table(path)
        assert_one_line(err)
        with raises(r"x\.txt\.gz: named \.gz but not gzip-compressed \(it is empty\)"):
            read_msd(write(tmp_path / "x.txt.gz", b""))

    def test_truncated_gzip(self, tmp_path):
        data = gzip.compress(b"user,item\n" + b"".join(b"%d,%d\n" % (i, i) for i in range(50_000)))
        path = write(tmp_path / "t.csv.gz", data[: len(data) // 2])
        with raises(r"t\.csv\.gz: corrupt or truncated gzip data \(.+\)") as err:
            read_table(path)
        assert_one_line(err)

    def test_bz2_checked_by_magic_and_read(self, tmp_path):
        import bz2

        path = write(tmp_path / "train_triplets.txt.bz2", bz2.compress(b"u1\ts1\t3\n"))
        assert read_msd(path)["value"].tolist() == [3.0]
        with raises(r"named \.bz2 but not bzip2-compressed"):
            read_msd(write(tmp_path / "plain.txt.bz2", "u1\ts1\t3\n"))


# =========================================================================== encodings, NUL bytes
# One small valid input per reader: (source, file name, text), the file read as ``path``.
TEXT_INPUTS = [
    ("table", "events.csv", "user,item\n1,2\n3,4\n"),
    ("movielens", "ratings.csv", ML_CSV),
    ("movielens", "u.data", "1\t31\t2.5\t1\n"),
    ("netflix", "combined_data_1.txt", "1:\n6,3,2005-09-06\n"),
    ("msd", "train_triplets.txt", "u1\ts1\t3\n"),
    ("lightgcn", "train.txt", "0 1 2\n1 2 3\n"),
    ("lightgcn", "user_list.txt", "org_id remap_id\nalice 0\nbob 1\n"),
    ("citeulike", "users.dat", "2 0 1\n1 3\n"),
]


def read_one(tmp_path: Path, source: str, name: str, data: bytes) -> pd.DataFrame:
    """Read ``data`` as the file ``name`` of ``source`` (LightGCN: in a folder with the others)."""
    if source != "lightgcn":
        return read_source(source, write(tmp_path / name, data))
    folder = lightgcn_dir(tmp_path, with_lists=False)
    write(folder / name, data)
    return read_source(source, folder)


class TestEncodings:
    """A file that is not UTF-8 is one error naming it and the encoding found, never garbage
    column names or ids full of NUL bytes."""

    @pytest.mark.parametrize("source, name, text", TEXT_INPUTS, ids=[n for _, n, _ in TEXT_INPUTS])
    @pytest.mark.parametrize(
        "encoding, found, iconv",
        [("utf-16", r"UTF-16 \(little-endian\) text \(byte-order mark FF FE\)", "UTF-16"),
         ("utf-16-be", r"UTF-16 \(big-endian\) text without a byte-order mark", "UTF-16BE"),
         ("utf-16-le", r"UTF-16 \(little-endian\) text without a byte-order mark", "UTF-16LE"),
         ("utf-32", r"UTF-32 \(little-endian\) text \(byte-order mark FF FE 00 00\)", "UTF-32")],
        ids=["utf-16", "utf-16-be", "utf-16-le", "utf-32"],
    )
    def test_utf16_and_utf32(self, tmp_path, source, name, text, encoding, found, iconv):
        expected = rf"expected UTF-8: re-encode it, e\.g\. iconv -f {iconv} -t UTF-8$"
        with raises(rf"{re.escape(name)}: {found}.*; {expected}") as err:
            read_one(tmp_path, source, name, text.encode(encoding))
        assert_one_line(err)

    def test_utf16_inside_a_zip_and_a_gzip(self, tmp_path):
        path = tmp_path / "ml.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("ml/ratings.csv", ML_CSV.encode("utf-16"))
        with raises(r"ml\.zip:ml/ratings\.csv: UTF-16 \(little-endian\) text"):
            read_movielens(path)
        with raises(r"t\.csv\.gz: UTF-16 \(little-endian\) text"):
            read_table(write(tmp_path / "t.csv.gz", gzip.compress("user,item\n1,2\n".encode("utf-16"))))

    @pytest.mark.parametrize(
        "source, name, data, line",
        [("table", "events.csv", "user,item\nj\xe9r\xf4me,2\n", 2),
         ("table", "events.csv", "us\xe9r,item\n1,2\n", 1),
         ("msd", "train_triplets.txt", "u1\ts1\t3\n\xe92\ts2\t1\n", 2),
         ("lightgcn", "train.txt", "0 1 2\n1 \xe9 3\n", 2),
         ("lightgcn", "user_list.txt", "org_id remap_id\nalice 0\nb\xf6b 1\n", 3),
         ("citeulike", "users.dat", "1 0\n1 \xe9\n", 2)],
        ids=["table-row", "table-header", "msd", "lightgcn", "user_list", "citeulike"],
    )
    def test_latin1_names_the_line(self, tmp_path, source, name, data, line):
        pattern = rf"{re.escape(name)}, line {line}: not UTF-8 text \(bytes b'\\x\w\w'\); expected UTF-8"
        with raises(pattern) as err:
            read_one(tmp_path, source, name, data.encode("latin-1"))
        assert_one_line(err)

    def test_a_header_cut_inside_a_character_is_utf8(self, tmp_path):
        # the header is read 64 KiB at a time: byte 65,536 falls inside an "é" (11 + 2k bytes)
        header = "user,item,x" + "é" * 40_000
        df = read_table(write(tmp_path / "t.csv", f"{header}\nu1,ß1,z\n"))
        assert df["user"].tolist() == ["u1"] and df["item"].tolist() == ["ß1"]

    def test_one_nul_in_a_header_is_no_encoding(self, tmp_path):
        # binary garbage is not mistaken for UTF-16: its one NUL byte is not every other byte
        with raises(r"t\.csv, line 1: no column 'user'"):
            read_table(write(tmp_path / "t.csv", bytes(range(256)) * 4))


class TestNulBytes:
    """One NUL byte in an id is an error naming the file, the line and the column: it used to
    turn every id of the column into text, silently."""

    @pytest.mark.parametrize(
        "name, data, where",
        [("t.csv", b"user,item\n1,2\n3\x00,4\n5,6\n", r"t\.csv, line 3, column 'user'"),
         ("t.tsv", b"user\titem\n1\t2\n3\t\x004\n", r"t\.tsv, line 3, column 'item'"),
         ("t.csv.gz", gzip.compress(b"user,item\nu1,2\nu\x002,4\n"), r"t\.csv\.gz, line 3, column 'user'")],
    )
    def test_table(self, tmp_path, name, data, where):
        with raises(rf"{where}: NUL byte in the id '.*\\x00.*'; expected an integer or text id "
                    r"without NUL bytes") as err:
            read_table(write(tmp_path / name, data))
        assert_one_line(err)

    def test_parquet(self, tmp_path):
        path = tmp_path / "t.parquet"
        pd.DataFrame({"user": ["a", "b\x00", "c"], "item": [1, 2, 3]}).to_parquet(path)
        with raises(r"t\.parquet, row 2, column 'user': NUL byte in the id 'b\\x00'"):
            read_table(path)

    def test_msd_and_lightgcn_user_list(self, tmp_path):
        with raises(r"train_triplets\.txt, line 2, column 'song': NUL byte in the id"):
            read_msd(write(tmp_path / "train_triplets.txt", b"u1\ts1\t3\nu2\ts\x002\t1\n"))
        root = lightgcn_dir(tmp_path / "gowalla")
        write(root / "item_list.txt", b"org_id remap_id\nx 0\ny\x00 1\n")
        with raises(r"item_list\.txt, line 3, column 'org_id': NUL byte in the id 'y\\x00'"):
            read_lightgcn(root)

    def test_lines_of_ids(self, tmp_path):
        root = lightgcn_dir(tmp_path / "gowalla", with_lists=False)
        write(root / "train.txt", b"0 1 2\n1 2\x00 3\n")
        with raises(r"train\.txt, line 2: NUL byte in the id; expected lines 'user item item \.\.\.'"
                    r".*got '2\\x00'"):
            read_lightgcn(root)
        with raises(r"users\.dat, line 2: NUL byte in the id; expected lines 'n item item"):
            read_citeulike(write(tmp_path / "users.dat", b"2 0 1\n1 3\x00\n"))

    def test_typed_readers_already_refused_them(self, tmp_path):
        text = ML_CSV.replace("1029", "10\x0029").encode()
        with raises(r"ratings\.csv, line 3, column 'movieId': expected an integer, got '10\\x0029'"):
            read_movielens(write(tmp_path / "ratings.csv", text))
        with raises(r"combined_data_1\.txt, line 2, column 'user': expected an integer"):
            read_netflix(write(tmp_path / "combined_data_1.txt", b"1:\n6\x00,3,2005-09-06\n"))
