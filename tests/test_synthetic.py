import json

import numpy as np
import pytest

from reloop2_tf.evaluation import synthetic_bench
from reloop2_tf.evaluation.synthetic import make_drifting_stream


def test_stream_flips_only_the_named_clusters_after_the_shift():
    kwargs = dict(num_rows=5000, shift_at=3000, shifted_clusters=(1, 4), seed=3)
    s = make_drifting_stream(**kwargs)
    flipped = (s.timestamps >= 3000) & np.isin(s.cluster, (1, 4))
    unshifted = make_drifting_stream(**{**kwargs, "shifted_clusters": ()})
    np.testing.assert_allclose(s.true_probs[flipped], 1 - unshifted.true_probs[flipped], rtol=1e-5)
    np.testing.assert_array_equal(s.true_probs[~flipped], unshifted.true_probs[~flipped])
    assert flipped.sum() > 300  # about 2/8 of the 2,000 rows after the shift
    with pytest.raises(ValueError, match="`shift_at`"):
        make_drifting_stream(num_rows=10, shift_at=20)


@pytest.mark.slow
def test_quick_bench_memory_recovers_most_of_the_shift(tmp_path):
    results = synthetic_bench.run(tmp_path, seed=0, quick=True, progress=False)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "slots.png").stat().st_size > 10_000
    assert set(on_disk["methods"]) == {"static", "reloop2", "reloop2-knn"}
    for m in on_disk["methods"].values():
        assert {"auc", "gauc", "logloss", "slots"} <= set(m)
        assert len(m["slots"]) == results["config"]["num_slots"]
        assert sum(s["rows"] for s in m["slots"]) == 24_000 - 14_000
    post = on_disk["post_shift"]
    assert post["static_pre_shift_auc"] - post["auc"]["static"] > 0.1  # the shift hurts
    assert post["recovery"]["reloop2"] > 0.5  # the sketch wins back most of it
    assert post["recovery"]["reloop2-knn"] > 0.5
    assert on_disk["methods"]["reloop2"]["logloss"] < on_disk["methods"]["static"]["logloss"]
