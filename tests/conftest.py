import os
from pathlib import Path

# Before anything imports TensorFlow: the project runs on tf-keras (Keras 2).
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Development and CI data (never committed): ../shared/data beside the checkout.
_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if "RELOOP2_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["RELOOP2_DATA"] = str(_SHARED)

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
