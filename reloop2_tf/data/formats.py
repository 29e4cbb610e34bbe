"""Readers for the MovieLens file formats: RecBole atomic files and GroupLens' own archives.

Each reader returns the same intermediate tables with every value as ``str``: ratings
(``user_id, item_id, rating, timestamp``), users (``user_id, age, gender, occupation``) and
items (``item_id, genre, release_year``); the loaders turn them into the canonical frame.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reloop2_tf.data.errors import DataError

logger = logging.getLogger(__name__)

RATING_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
USER_FEATURES = ("age", "gender", "occupation")
ITEM_FEATURES = ("genre", "release_year")

# Genre order of the 19 flags at the end of ml-100k's u.item (its README).
GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
_WHITESPACE = re.compile(r"\s")


@dataclass
class MovieLensTables:
    """Raw MovieLens tables in the intermediate all-``str`` layout."""

    fmt: str
    ratings: pd.DataFrame
    users: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
    files: list[Path] = field(default_factory=list)


@dataclass
class DetectedSource:
    """A folder whose files were recognised as one MovieLens format."""

    fmt: str
    folder: Path
    ratings: Path
    users: Path | None = None
    items: Path | None = None

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.ratings, self.users, self.items) if p is not None]


def _first_existing(folder: Path, names: list[str]) -> Path | None:
    for name in names:
        path = folder / name
        if path.is_file():
            return path
    return None


def detect_format(folder: Path, name: str | None = None) -> DetectedSource | None:
    """Recognise the MovieLens format of the files in ``folder``; None if there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    inter = None
    if name:
        inter = _first_existing(folder, [f"{name}.inter", f"{name}.inter.gz"])
    if inter is None:
        found = sorted(folder.glob("*.inter")) + sorted(folder.glob("*.inter.gz"))
        if len(found) > 1:
            raise DataError(
                f"{folder} holds several RecBole .inter files "
                f"({', '.join(p.name for p in found)}); "
                f"pass the dataset name that matches one of them"
            )
        inter = found[0] if found else None
    if inter is not None:
        stem = inter.name[: inter.name.index(".inter")]
        return DetectedSource(
            "recbole-atomic", folder, inter,
            _first_existing(folder, [f"{stem}.user", f"{stem}.user.gz"]),
            _first_existing(folder, [f"{stem}.item", f"{stem}.item.gz"]),
        )
    layouts = (
        ("grouplens-100k", "u.data", "u.user", "u.item"),
        ("grouplens-1m", "ratings.dat", "users.dat", "movies.dat"),
        ("movielens-latest", "ratings.csv", None, "movies.csv"),
    )
    for fmt, ratings, users, items in layouts:
        if (folder / ratings).is_file():
            return DetectedSource(
                fmt, folder, folder / ratings,
                _first_existing(folder, [users]) if users else None,
                _first_existing(folder, [items]),
            )
    return None


def _read_text(path: Path, encodings: tuple[str, ...] = ("utf-8", "latin-1")) -> str:
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    else:
        raw = path.read_bytes()
    for encoding in encodings:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DataError(f"{path} is not text in any of {', '.join(encodings)}")


def _read_delimited(path: Path, **kwargs: object) -> pd.DataFrame:
    # Every value stays str and no token is taken for a missing value: ids such as "NA" or
    # "null" are real ids. Files are decoded as UTF-8, falling back to latin-1 (GroupLens).
    options: dict[str, object] = {"dtype": str, "keep_default_na": False, "na_filter": False}
    options.update(kwargs)
    try:
        try:
            return pd.read_csv(path, encoding="utf-8-sig", **options)
        except UnicodeDecodeError:
            return pd.read_csv(path, encoding="latin-1", **options)
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path} is empty") from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"{path} cannot be parsed: {str(exc).splitlines()[0]}") from exc


def _read_atomic(path: Path) -> pd.DataFrame:
    frame = _read_delimited(path, sep="\t", quoting=csv.QUOTE_NONE)
    names, types = [], {}
    for header in frame.columns:
        col, _, kind = str(header).partition(":")
        names.append(col)
        types[col] = kind
    frame.columns = names
    for col, kind in types.items():
        # RecBole stores some categorical columns as float ("1995.0" in some exports); the
        # token should read the same as in the GroupLens files.
        if kind == "float" and col not in RATING_COLUMNS:
            frame[col] = frame[col].str.replace(r"\.0$", "", regex=True)
    return frame


def _require(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path.name} lacks column(s) {', '.join(missing)}; available columns: "
            f"{', '.join(map(str, frame.columns))}"
        )


def _first_token(values: pd.Series, sep: str | None) -> pd.Series:
    tokens = values.str.strip().str.split(sep, n=1).str[0].fillna("")
    return tokens.where(tokens != "(no genres listed)", "")


def _year_from_title(titles: pd.Series) -> pd.Series:
    return titles.str.extract(_TITLE_YEAR, expand=False).fillna("")


def _compact_item_ids(tables: MovieLensTables) -> None:
    """Replace item ids that contain whitespace (the titles of RecBole's ml-1m) by short ids.

    A history is a space-separated list of ids, so ids must be single tokens; short ids also
    keep ML-1M's history column at a fifth of the size it would have with titles.
    """
    ratings = tables.ratings
    uniques = pd.unique(ratings["item_id"])
    if not any(_WHITESPACE.search(u) for u in uniques):
        return
    order: list[str] = []
    if tables.items is not None:
        order = list(pd.unique(tables.items["item_id"]))
    known = set(order)
    order += [u for u in uniques if u not in known]
    mapping = {old: str(i) for i, old in enumerate(order, start=1)}
    ratings["item_id"] = ratings["item_id"].map(mapping)
    if tables.items is not None:
        tables.items["item_id"] = tables.items["item_id"].map(mapping)
    logger.info(
        "item ids contain spaces: replaced %d ids by their 1-based row in the item file", len(order)
    )


def read_recbole(source: DetectedSource) -> MovieLensTables:
    """Read RecBole atomic files (``<name>.inter`` [``.gz``], ``.user``, ``.item``)."""
    ratings = _read_atomic(source.ratings)
    _require(ratings, RATING_COLUMNS, source.ratings)
    tables = MovieLensTables(source.fmt, ratings[list(RATING_COLUMNS)].copy(), files=source.files)
    if source.users is not None:
        users = _read_atomic(source.users)
        _require(users, ("user_id",), source.users)
        keep = ["user_id"] + [c for c in USER_FEATURES if c in users.columns]
        tables.users = users[keep].copy()
    if source.items is not None:
        items = _read_atomic(source.items)
        _require(items, ("item_id",), source.items)
        out = pd.DataFrame({"item_id": items["item_id"]})
        genre_col = next((c for c in ("genre", "class", "genres") if c in items.columns), None)
        if genre_col is not None:
            out["genre"] = _first_token(items[genre_col], None)
        if "release_year" in items.columns:
            out["release_year"] = items["release_year"]
        tables.items = out
    _compact_item_ids(tables)
    return tables


def read_grouplens_100k(source: DetectedSource) -> MovieLensTables:
    """Read ml-100k's ``u.data`` / ``u.user`` / ``u.item``."""
    ratings = _read_delimited(
        source.ratings, sep="\t", header=None, names=list(RATING_COLUMNS), quoting=csv.QUOTE_NONE
    )
    tables = MovieLensTables(source.fmt, ratings, files=source.files)
    if source.users is not None:
        users = _read_delimited(
            source.users, sep="|", header=None, quoting=csv.QUOTE_NONE,
            names=["user_id", "age", "gender", "occupation", "zip_code"],
        )
        tables.users = users[["user_id", *USER_FEATURES]].copy()
    if source.items is not None:
        items = _read_delimited(source.items, sep="|", header=None, quoting=csv.QUOTE_NONE)
        if items.shape[1] != 5 + len(GENRES_100K):
            raise DataError(
                f"{source.items.name} has {items.shape[1]} '|'-separated fields, expected "
                f"{5 + len(GENRES_100K)} (id|title|release date|video date|url|19 genre flags)"
            )
        flags = items.iloc[:, 5:].to_numpy() == "1"
        first = flags.argmax(axis=1)
        genre = np.where(flags.any(axis=1), np.asarray(GENRES_100K, dtype=object)[first], "")
        tables.items = pd.DataFrame({
            "item_id": items[0],
            "genre": genre,
            # "01-Jan-1995" -> "1995"
            "release_year": items[2].str.extract(r"(\d{4})\s*$", expand=False).fillna(""),
        })
    return tables


def _split_dat(path: Path, names: list[str]) -> pd.DataFrame:
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) < len(names):
            raise DataError(
                f"{path.name} line {lineno} has {len(parts)} '::'-separated fields, expected "
                f"{len(names)}: {line[:80]!r}"
            )
        if len(parts) > len(names):
            # Only a title can contain the separator; it is the middle field of movies.dat.
            parts = [parts[0], "::".join(parts[1:-1]), parts[-1]]
        rows.append(parts)
    return pd.DataFrame(rows, columns=names, dtype=str)


def read_grouplens_1m(source: DetectedSource) -> MovieLensTables:
    """Read ml-1m's ``ratings.dat`` / ``users.dat`` / ``movies.dat`` (``::``-separated)."""
    # A single ':' separator lets the fast C parser read the 1M purely numeric rating lines;
    # the empty fields between the two colons are dropped.
    raw = _read_delimited(source.ratings, sep=":", header=None, quoting=csv.QUOTE_NONE)
    if raw.shape[1] != 7:
        raise DataError(
            f"{source.ratings.name} is not UserID::MovieID::Rating::Timestamp "
            f"(found {(raw.shape[1] + 1) // 2} fields)"
        )
    ratings = raw[[0, 2, 4, 6]].copy()
    ratings.columns = list(RATING_COLUMNS)
    tables = MovieLensTables(source.fmt, ratings, files=source.files)
    if source.users is not None:
        users = _split_dat(source.users, ["user_id", "gender", "age", "occupation", "zip_code"])
        tables.users = users[["user_id", *USER_FEATURES]].copy()
    if source.items is not None:
        movies = _split_dat(source.items, ["item_id", "title", "genres"])
        tables.items = pd.DataFrame({
            "item_id": movies["item_id"],
            "genre": _first_token(movies["genres"], "|"),
            "release_year": _year_from_title(movies["title"]),
        })
    return tables


def read_movielens_latest(source: DetectedSource) -> MovieLensTables:
    """Read ml-latest style ``ratings.csv`` (+ ``movies.csv``)."""
    ratings = _read_delimited(source.ratings)
    expected = ("userId", "movieId", "rating", "timestamp")
    _require(ratings, expected, source.ratings)
    ratings = ratings[list(expected)].copy()
    ratings.columns = list(RATING_COLUMNS)
    tables = MovieLensTables(source.fmt, ratings, files=source.files)
    if source.items is not None:
        movies = _read_delimited(source.items)
        _require(movies, ("movieId", "title", "genres"), source.items)
        tables.items = pd.DataFrame({
            "item_id": movies["movieId"],
            "genre": _first_token(movies["genres"], "|"),
            "release_year": _year_from_title(movies["title"]),
        })
    return tables


READERS = {
    "recbole-atomic": read_recbole,
    "grouplens-100k": read_grouplens_100k,
    "grouplens-1m": read_grouplens_1m,
    "movielens-latest": read_movielens_latest,
}


def read_movielens(source: DetectedSource) -> MovieLensTables:
    """Read the files of a detected source into intermediate tables."""
    return READERS[source.fmt](source)


__all__ = ["DetectedSource", "MovieLensTables", "detect_format", "read_movielens"]
