"""The design study's within-user sums (benchmarks/trust_study/ranking.py), checked against the
direct computation: the docs quote the variant's figures, so its arithmetic must be right."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from trust_study.ranking import Variant  # noqa: E402


def test_running_within_user_sums_equal_the_pooled_within_user_scatter():
    rng = np.random.default_rng(0)
    n, f, users = 60, 4, 7
    u = rng.integers(0, users, n)
    x, y = rng.standard_normal((n, f)), rng.integers(0, 2, n).astype(float)
    p = rng.uniform(0.1, 0.9, n)
    v, w = p * (1 - p), rng.standard_normal(f)
    t = x @ w + (y - p) / v  # the working response
    state = Variant.__new__(Variant)
    state.user_w, state.user_x, state.user_t = np.zeros(users), None, np.zeros(users)
    h, m = np.zeros((f, f)), np.zeros(f)
    for rows in np.split(np.arange(n), [9, 10, 31, 44]):  # batches with repeated users
        dh, dm = state._running_within(u[rows], x[rows], v[rows], p[rows], y[rows], w, 1.0)
        h, m = h + dh, m + dm
    expect_h, expect_m = np.zeros((f, f)), np.zeros(f)
    for k in range(users):
        r = u == k
        if not r.any():
            continue
        xm = (v[r, None] * x[r]).sum(0) / v[r].sum()
        tm = (v[r] * t[r]).sum() / v[r].sum()
        expect_h += ((x[r] - xm) * v[r, None]).T @ (x[r] - xm)
        expect_m += ((x[r] - xm) * v[r, None]).T @ (t[r] - tm)
    np.testing.assert_allclose(h, expect_h, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(m, expect_m, rtol=1e-9, atol=1e-9)
    # users never seen hold no weight
    assert np.allclose(state.user_w[np.bincount(u, minlength=users) == 0], 0.0)
