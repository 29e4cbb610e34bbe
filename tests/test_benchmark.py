import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from reloop2_tf.cli import main as cli
from reloop2_tf.data import DataError, id_groups_for_frame, load_dataset
from reloop2_tf.evaluation import benchmark
from reloop2_tf.evaluation.windows import feedback_windows


@pytest.fixture(scope="module")
def ml100k():
    return load_dataset("ml-100k")


@pytest.mark.slow
def test_quick_cli_run_writes_results_json_and_plots(tmp_path, ml100k):
    out = tmp_path / "quick"
    assert cli.main(["bench", "--dataset", "ml-100k", "--quick", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == set(benchmark.METHODS)
    test_rows = len(ml100k) - int(len(ml100k) * 0.8)
    for name, m in results["methods"].items():
        assert {"auc", "gauc", "logloss", "slots", "gauc_window"} <= set(m), name
        assert len(m["slots"]) == 5
        assert sum(s["rows"] for s in m["slots"]) == test_rows
        for s in m["slots"]:
            assert {"auc", "gauc", "logloss", "rows"} <= set(s)
            assert 0.5 < s["auc"] < 1.0 and s["logloss"] > 0
    assert {"config", "seed", "wall_seconds", "split", "validation"} <= set(results)
    assert results["config"]["quick"] is True and results["seed"] == 0
    chosen = results["validation"]["chosen"]["lsh"]
    assert chosen["compensation_weight"] in benchmark.QUICK_SWEEP_GRID["compensation_weight"]
    default = results["validation"]["chosen"]["reloop2"]
    assert default["prior_count"] in benchmark.QUICK_DEFAULT_SWEEP_GRID["prior_count"]
    assert default["self_tuning"] and ["item_id"] in default["id_groups"]
    assert results["config"]["feedback_every"] == 1000
    # The test memory started from the trust the chosen setting learnt on validation.
    assert results["config"]["carry_trust"] is True
    carried = results["trust_from_validation"]
    assert len(carried) > 2 and any(abs(t) > 0.01 for t in carried)
    assert results["validation"]["chosen"]["ftrl-offset"]["alpha"] in {
        f.alpha for f in benchmark.FTRL_GRID}
    assert results["split"]["test_start_timestamp"] >= int(
        ml100k["timestamp"].iloc[results["split"]["train_rows"] - 1])
    assert (out / "slots.png").stat().st_size > 10_000
    assert (out / "sweeps.png").stat().st_size > 10_000
    assert (out / "head_to_head.png").stat().st_size > 10_000
    for name, lift in results["lift_vs_static"].items():
        for key in ("auc", "gauc", "logloss"):
            low, high = lift[key + "_ci95"]
            assert low <= lift[key] <= high, (name, key)
    # Head to head: the first method minus the second, paired, for every pair the claims use.
    pairs = results["head_to_head"]
    assert set(pairs) == {f"{b} vs {a}" for a, b in benchmark.HEAD_TO_HEAD}
    lifts, methods = results["lift_vs_static"], results["methods"]
    for a, b in benchmark.HEAD_TO_HEAD:
        d = pairs[f"{b} vs {a}"]
        assert d["gauc"] == pytest.approx(lifts[b]["gauc"] - lifts[a]["gauc"], abs=1e-12)
        for key in ("auc", "logloss", "gauc_window"):
            assert d[key] == pytest.approx(methods[b][key] - methods[a][key], abs=1e-12)
        for key in ("auc", "gauc", "logloss"):
            low, high = d[key + "_ci95"]
            assert low <= d[key] <= high and low < high, (a, b, key)
    table = benchmark.format_table(results)
    d = pairs["incremental+reloop2 vs reloop2"]
    line = next(x for x in table.splitlines() if x.startswith("incremental+reloop2 vs reloop2"))
    assert line.split()[3:6] == [f"{100 * d['auc']:+.2f}", f"[{100 * d['auc_ci95'][0]:+.2f},",
                                 f"{100 * d['auc_ci95'][1]:+.2f}]"]


@pytest.mark.slow
def test_lambda_zero_reloop2_equals_static(tmp_path, ml100k):
    config = benchmark.BenchConfig(dataset="ml-100k", num_slots=3, epochs=1, sweep=False,
                                   warm_start_rows=2000)
    config.memory.compensation_weight = 0.0
    results = benchmark.run_benchmark(ml100k.iloc[:20_000], config, tmp_path, progress=False,
                                      methods=("static", "reloop2", "reloop2-knn"))
    static = results["methods"]["static"]
    assert results["methods"]["reloop2"] == static
    lift = results["lift_vs_static"]["reloop2"]
    assert lift["gauc"] == 0.0
    # Identical scores: every paired interval collapses on zero.
    assert lift["auc_ci95"] == [0.0, 0.0] and lift["logloss_ci95"] == [0.0, 0.0]


def _no_training(*args, **kwargs):
    raise AssertionError("training started before the input was checked")


@pytest.mark.parametrize("corrupt,message", [
    (lambda df: df.drop(columns=["item_id"]), "item_id"),
    (lambda df: df.assign(timestamp=df["timestamp"].astype(str).where(df.index % 7 > 0, "x")),
     "timestamp"),
    (lambda df: df.assign(timestamp=df["timestamp"].astype(float).where(df.index % 7 > 0)),
     "timestamp"),
    (lambda df: df.assign(label=np.where(df.index % 5 == 0, 3, df["label"])), "label"),
    (lambda df: df.iloc[::-1].reset_index(drop=True), "sorted"),
    (lambda df: df.iloc[:12], "slots"),
])
def test_bad_input_fails_before_training(monkeypatch, tmp_path, ml100k, corrupt, message):
    monkeypatch.setattr(benchmark, "_train", _no_training)
    df = corrupt(ml100k.iloc[:2000].copy())
    config = benchmark.BenchConfig(dataset="csv", num_slots=10)
    with pytest.raises(DataError, match=message):
        benchmark.run_benchmark(df, config, tmp_path, progress=False)


def test_cli_reports_bad_arguments_in_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--dataset", "csv", "--output", str(tmp_path)])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--csv" in err[0]


def test_cli_bench_on_a_generic_csv_with_missing_column(capsys, tmp_path):
    log = tmp_path / "log.csv"
    pd.DataFrame({"u": ["a", "b"], "i": ["x", "y"], "t": [1, 2]}).to_csv(log, index=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--dataset", "csv", "--csv", str(log), "--user-col", "u",
                  "--item-col", "i", "--time-col", "t", "--label-col", "clicked",
                  "--output", str(tmp_path / "out")])
    assert exit_info.value.code != 0
    assert "clicked" in capsys.readouterr().err


def test_default_id_groups_follow_the_sides_of_the_log(ml100k):
    groups = id_groups_for_frame(ml100k)
    assert groups[0] == ["item_id"]
    assert {tuple(g) for g in groups[1:]} == {
        ("user_id", "genre"), ("user_id", "release_year"),   # item-side features x user
        ("item_id", "age"), ("item_id", "gender"), ("item_id", "occupation"),  # user-side x item
        ("user_id", "item_id:popularity")}  # the user x how popular the item is
    # A context column (neither the item's nor the user's) is crossed with the item.
    df = ml100k.iloc[:3000].assign(position=np.arange(3000) % 3, constant=1, row=np.arange(3000),
                                   score=np.linspace(0, 1, 3000))
    groups = id_groups_for_frame(df)
    assert ["item_id", "position"] in groups
    assert not any(name in g for g in groups for name in ("constant", "row", "score"))
    # A column that names the items or the users (a title: at most 10 % of the ids share their
    # value with another id) is no side feature: crossed with it, a table would key (user,
    # item) pairs. A column whose every value two items share stays.
    items = sorted(ml100k["item_id"].unique(), key=int)
    users = sorted(ml100k["user_id"].unique(), key=int)
    title = {item: f"title {item}" for item in items}
    # 5 % of the titles shared by two films, as remakes share a title.
    remade = {item: f"title {i - 1 if i % 40 == 1 else i}" for i, item in enumerate(items)}
    pair = {item: f"pair {i // 2}" for i, item in enumerate(items)}
    nickname = {user: f"nick {user}" for user in users}
    df = ml100k.assign(title=ml100k["item_id"].map(title), remade=ml100k["item_id"].map(remade),
                       pair=ml100k["item_id"].map(pair), nickname=ml100k["user_id"].map(nickname))
    groups = id_groups_for_frame(df)
    assert ["user_id", "pair"] in groups and ["user_id", "genre"] in groups
    assert not any(name in g for g in groups for name in ("title", "remade", "nickname"))
    # On a slice with few users, a user-side column most of whose values are each one user's
    # still groups them when more than 10 % share theirs: ML-100K's first 2,000 rows, 22 users
    # of 17 ages.
    few = ml100k.iloc[:2000]
    assert few["age"].nunique() < few["user_id"].nunique() <= 25
    assert ["item_id", "age"] in id_groups_for_frame(few)
    # An item-side column listing several tokens ("Comedy|Drama") is crossed token by token.
    tags = {item: "|".join(["a", "b", "c"][:1 + int(item) % 3])
            for item in ml100k["item_id"].unique()}
    interests = {user: "|".join(["x", "y"][:1 + int(user) % 2])
                 for user in ml100k["user_id"].unique()}
    groups = id_groups_for_frame(ml100k.assign(tags=ml100k["item_id"].map(tags),
                                               interests=ml100k["user_id"].map(interests)))
    assert ["user_id", "tags:each"] in groups and ["user_id", "genre"] in groups
    assert ["item_id", "interests:each"] in groups and ["item_id", "age"] in groups


def test_id_tables_are_sized_to_the_keys_of_their_rows_by_hand():
    from reloop2_tf.data import id_bits_for_frame, id_keys_for_frame

    df = pd.DataFrame({"user_id": ["a", "a", "b", "b", "c"], "item_id": ["x", "y", "x", "x", "z"],
                       "genres": ["C|D", "D", "C| E", "C", ""]})
    groups = ["item_id", ("user_id", "genres:each"), ("user_id", "item_id:popularity")]
    # user x genre tokens: a-C, a-D, b-C, b-E (c lists none); user x the item's rows before the
    # row, floor(log2(1 + c)): a-0 (x, then y), b-1 (x seen once, then twice), c-0; the user's
    # own table, which both crosses are read net of: a, b, c.
    assert id_keys_for_frame(df, groups) == {"item_id": 3, "user_id*genres:each": 4,
                                             "user_id*item_id:popularity": 3, "user_id": 3}
    # Per table, the fewest bits whose buckets its keys fill at most 5 %: 3 keys -> 60 -> 2^6,
    # 4 keys -> 80 -> 2^7.
    five = {"shared_bucket_chance": 0.05, "single_feature_chance": 0.05, "bits_range": (1, 24)}
    assert id_bits_for_frame(df, groups, **five) == {
        "item_id": 6, "user_id*genres:each": 7, "user_id*item_id:popularity": 6, "user_id": 6}
    # By default a cross's table at 2 % (150 and 200 -> 2^8), a single feature's at 0.1 %
    # (3,000 -> 2^12).
    assert id_bits_for_frame(df, groups, bits_range=(1, 24)) == {
        "item_id": 12, "user_id*genres:each": 8, "user_id*item_id:popularity": 8, "user_id": 12}
    assert id_bits_for_frame(df, groups, shared_bucket_chance=0.5, single_feature_chance=0.5,
                             bits_range=(1, 24)) == {
        "item_id": 3, "user_id*genres:each": 3, "user_id*item_id:popularity": 3, "user_id": 3}
    assert set(id_bits_for_frame(df, groups).values()) == {16}  # the default range's floor
    # Only the newest rows count: (b, x, "C") and (c, z, "") hold 2 keys per table -> 40 -> 2^6,
    # one user x genre (c lists none) -> 20 -> 2^5.
    assert id_bits_for_frame(df, groups, rows=2, **five) == {
        "item_id": 6, "user_id*genres:each": 5, "user_id*item_id:popularity": 6, "user_id": 6}
    many = pd.DataFrame({"item_id": np.arange(300_000).astype(str),
                         "user_id": (np.arange(300_000) % 100).astype(str)})
    # 200,000 newest items want 2^22 at 5 % (the default range stops at 2^20), 100 users 2^11.
    crossed = ["item_id", ("user_id", "item_id:popularity")]
    assert id_bits_for_frame(many, crossed, **five) == {
        "item_id": 22, "user_id*item_id:popularity": 11, "user_id": 11}
    assert id_bits_for_frame(many, crossed) == {  # the users at 0.1 %: 100,000 -> 2^17
        "item_id": 20, "user_id*item_id:popularity": 16, "user_id": 17}
    assert id_bits_for_frame(many, ["item_id"], rows=None, **five) == {"item_id": 23}
    for kwargs, message in (({"shared_bucket_chance": 0.0}, "shared_bucket_chance"),
                            ({"single_feature_chance": 1.0}, "single_feature_chance"),
                            ({"bits_range": (20, 18)}, "bits_range"), ({"rows": 0}, "rows")):
        with pytest.raises(ValueError, match=message):
            id_bits_for_frame(df, groups, **kwargs)
    with pytest.raises(DataError, match="'tags'"):
        id_keys_for_frame(df, [("user_id", "tags:each")])


def test_the_benchmark_sizes_the_id_tables_from_the_training_rows_only(ml100k):
    from reloop2_tf.data import id_bits_for_frame

    train = ml100k.iloc[:2000]
    # The test rows bring 100,000 new items, which would want a larger table: not looked at.
    test = pd.concat([ml100k.iloc[2000:2100]] * 1000, ignore_index=True).assign(
        item_id=np.arange(100_000).astype(str))
    df = pd.concat([train, test], ignore_index=True)
    memory = benchmark.MemoryConfig()
    memory.fit_to_log(df, train)
    assert memory.id_groups == id_groups_for_frame(df)
    assert memory.id_bits == id_bits_for_frame(train, memory.id_groups)
    # The crosses with the item would want 2^20 with the test rows' items (100,000 new keys at
    # 2 %), the item table 2^20 either way (a single feature's keys at 0.1 %).
    everything = id_bits_for_frame(df, memory.id_groups)
    assert everything["item_id*age"] == 20 and memory.id_bits["item_id*age"] < 20
    assert memory.id_bits["item_id"] == everything["item_id"] == 20
    assert memory.layer(0).memory.id_bits == memory.id_bits
    fixed = benchmark.MemoryConfig(id_bits=12)
    fixed.fit_to_log(df, train)
    assert fixed.id_bits == 12 and fixed.layer(0).memory.id_bits == 12
    # A config used alone builds the library's default.
    assert benchmark.MemoryConfig(id_groups=[["item_id"]]).layer(0).memory.id_bits == 18


def test_the_benchmarks_default_memory_centres_its_srp_tables_as_the_librarys_does():
    groups = [["item_id"], ["user_id", "genre"]]
    memory = benchmark.MemoryConfig(id_groups=groups)
    assert memory.layer(0).memory.srp_centre == "user_id"
    off = benchmark.ablations(memory)
    assert off["reloop2 no-srp-centre"].layer(0).memory.srp_centre is None
    # Without SRP tables, or without the user's table, there is nothing to centre.
    assert off["reloop2 no-srp"].layer(0).memory.srp_centre is None
    assert off["reloop2 no-crosses"].layer(0).memory.srp_centre is None
    assert benchmark.paper_memory().layer(0).memory.srp_centre is None


def test_every_ablation_builds_with_the_tables_sized_one_by_one():
    # A config sized to a log holds every table's bits; a variant without some groups builds
    # with the bits of the tables it keeps, and a variant with the bare user group gets the
    # size the log gave the user's table (the crosses' first feature).
    groups = [["item_id"], ["user_id", "genre"], ["user_id", "item_id:popularity"]]
    bits = {"item_id": 9, "user_id*genre": 11, "user_id*item_id:popularity": 8, "user_id": 7}
    memory = benchmark.MemoryConfig(id_groups=groups, id_bits=bits)
    built = {name: m.layer(0).memory for name, m in benchmark.ablations(memory).items()}
    assert built["reloop2 no-crosses"].id_bits == 9
    assert built["reloop2 no-ids"].id_tables == ()
    assert built["reloop2 no-user_id*genre"].id_bits == {
        "item_id": 9, "user_id*item_id:popularity": 8, "user_id": 7}
    assert built["reloop2 + user"].id_bits == {**bits}
    # ..., the user's table, then the recent item's and the recent user's (a single feature now)
    assert built["reloop2 + user"].table_sizes[-3:] == (2**7, 2**9, 2**7)
    assert memory.layer(0).memory.id_bits == bits


def test_ftrl_crosses_a_multi_valued_feature_token_by_token():
    df = pd.DataFrame({"user_id": ["u", "v"], "genres": ["a| b", ""]})
    keys = benchmark._cross_keys(df, [("user_id",), ("user_id", "genres:each")])
    assert keys.shape == (2, 1 + 4)
    assert list(keys[0]) == ["u", "u\x1fa", "u\x1fb", None, None]
    assert list(keys[1]) == ["v", None, None, None, None]


def _bench_config(monkeypatch, tmp_path, *argv) -> benchmark.BenchConfig:
    """The config ``reloop2 bench --dataset ml-100k ARGV`` would run with."""
    seen = []

    def record(df, config, output, **kwargs):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(benchmark, "run_benchmark", record)
    with pytest.raises(SystemExit):
        cli.main(["bench", "--dataset", "ml-100k", "--output", str(tmp_path), *argv])
    return seen.pop()


def test_cli_id_bits_flag_fixes_the_id_tables_size(monkeypatch, tmp_path, ml100k):
    assert _bench_config(monkeypatch, tmp_path).memory.id_bits is None  # sized from the log
    assert _bench_config(monkeypatch, tmp_path, "--id-bits", "14").memory.id_bits == 14


def test_cli_cold_trust_flag_starts_the_combiner_at_zero(monkeypatch, tmp_path, ml100k):
    assert _bench_config(monkeypatch, tmp_path).carry_trust is True
    assert _bench_config(monkeypatch, tmp_path, "--cold-trust").carry_trust is False


def test_cli_warm_start_rows_flag(monkeypatch, tmp_path, ml100k):
    # --quick keeps the full protocol's warm start (5,000 rows changed which method led).
    for argv, rows in (([], 20_000), (["--quick"], 20_000), (["--warm-start-rows", "0"], 0),
                       (["--quick", "--warm-start-rows", "80000"], 80_000)):
        assert _bench_config(monkeypatch, tmp_path, *argv).warm_start_rows == rows
    for bad in ("-1", "many"):
        with pytest.raises(Exception, match="rows >= 0"):
            cli._rows(bad)


def test_cli_half_life_flag_fixes_the_forgetting_the_sweep_would_choose(monkeypatch, tmp_path,
                                                                         ml100k):
    chosen = _bench_config(monkeypatch, tmp_path)
    assert "half_life" in benchmark.default_sweep_grid(chosen)
    for value, half_life in (("0", None), ("50000", 50_000.0)):
        fixed = _bench_config(monkeypatch, tmp_path, "--half-life", value)
        assert fixed.memory.half_life == half_life
        assert benchmark.default_sweep_grid(fixed) == {"prior_count": [2.0, 5.0]}


def test_cli_half_life_zero_means_no_forgetting_in_the_drift_testbed_too(monkeypatch, tmp_path,
                                                                         ml100k):
    from reloop2_tf.evaluation import drift_bench

    seen = []

    def record(df, config, output):
        seen.append(config)
        raise SystemExit(0)

    monkeypatch.setattr(drift_bench, "run_drift", record)
    with pytest.raises(SystemExit):
        cli.main(["bench", "--dataset", "ml-100k", "--scenario", "flip-sudden", "--half-life", "0",
                  "--output", str(tmp_path)])
    assert seen.pop().memory.half_life is None  # a half-life of 0 rows is refused by the layer


def test_cli_feedback_seconds_flag(monkeypatch, tmp_path, ml100k, capsys):
    default = _bench_config(monkeypatch, tmp_path)
    assert (default.feedback_every, default.feedback_seconds) == (1000, None)
    assert _bench_config(monkeypatch, tmp_path, "--feedback-every", "slot").feedback_every is None
    assert _bench_config(monkeypatch, tmp_path, "--feedback-every", "250").feedback_every == 250
    timed = _bench_config(monkeypatch, tmp_path, "--feedback-seconds", "3600")
    assert timed.feedback_seconds == 3600.0
    for argv in (["--feedback-every", "100"], ["--scenario", "flip-sudden"]):
        with pytest.raises(SystemExit):
            cli.main(["bench", "--dataset", "ml-100k", "--output", str(tmp_path),
                      "--feedback-seconds", "600", *argv])
        assert "`--feedback-seconds` cuts the streaming benchmark" in capsys.readouterr().err
    for bad in ("0", "-5", "soon", "inf"):
        with pytest.raises(Exception, match="seconds > 0"):
            cli._seconds(bad)
    with pytest.raises(ValueError, match="feedback-seconds"):
        benchmark.BenchConfig(dataset="ml-100k", feedback_seconds=-1.0).validate(100_000)


def test_feedback_windows_by_rows_slots_and_seconds():
    assert feedback_windows([5, 3], 2).tolist() == [0, 0, 1, 1, 2, 3, 3, 4]
    assert feedback_windows([5, 3]).tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    times = np.array([0, 10, 59, 60, 61, 200, 200, 230, 370])
    # 60-second windows of the clock, [0, 60), [60, 120), ...; a window also ends with its slot
    by_time = feedback_windows([6, 3], times=times, feedback_seconds=60)
    assert by_time.tolist() == [0, 0, 0, 1, 1, 2, 3, 3, 4]
    assert feedback_windows([9], 1000, times, feedback_seconds=1000).tolist() == [0] * 9
    for bad, match in (((times[::-1],), "stream order"), ((times[:5],), "one finite timestamp"),
                       ((None,), "needs `times`")):
        with pytest.raises(ValueError, match=match):
            feedback_windows([6, 3], None, *bad, feedback_seconds=60)
    with pytest.raises(ValueError, match="> 0"):
        feedback_windows([9], None, times, feedback_seconds=0)


def test_labels_by_the_clock_are_written_when_their_window_closes():
    """A replay with windows of the log's clock reads each window with the labels of every
    earlier window written and none of its own: the same as writing window by window by hand."""
    import reloop2_tf as r2
    from reloop2_tf.evaluation import streaming

    rng = np.random.default_rng(0)
    n, d = 400, 4
    times = np.sort(rng.integers(0, 4000, n)).astype(float)
    hidden = rng.normal(size=(n, d)).astype(np.float32)
    feats = {"item": rng.integers(0, 5, n).astype(str)}
    logits = rng.normal(size=n).astype(np.float32)
    labels = (rng.random(n) < 0.3).astype(np.float32)

    def fresh():
        mem = r2.LSHErrorMemory(num_tables=2, num_bits=3, id_bits=8, id_groups=["item"])
        mem.build([None, d])
        return r2.ErrorCompensation(mem)

    windows = feedback_windows([n], times=times, feedback_seconds=500)
    assert len(streaming.feedback_chunks(windows, n)) == len(np.unique(times // 500))
    replayed, by_hand, by_rows = fresh(), fresh(), fresh()
    inputs = streaming.memory_inputs(replayed.memory, hidden, feats)
    out = streaming.replay_encoded(replayed, logits, inputs, labels, windows)
    expected = []
    for cell in np.unique(times // 500):
        rows = np.flatnonzero(times // 500 == cell)
        served = by_hand.compensate_keys(logits[rows], inputs[rows])
        expected.append(served["probability"].numpy())
        by_hand.update_memory_by_keys(inputs[rows], served["base_probability"], labels[rows])
    np.testing.assert_array_equal(out["probability"], np.concatenate(expected))
    # the same rows cut every 100 rows are read against other states
    rows = streaming.replay_encoded(by_rows, logits, inputs, labels, feedback_windows([n], 100))
    assert np.abs(rows["probability"] - out["probability"]).max() > 1e-4
    with pytest.raises(ValueError, match="one window per row"):
        streaming.replay_encoded(fresh(), logits, inputs, labels, windows[:-1])


def test_cli_feedback_and_id_group_flags():
    assert cli._feedback_every("slot") == 0 and cli._feedback_every("250") == 250
    assert cli._id_groups("item_id,user_id*genre") == [["item_id"], ["user_id", "genre"]]
    assert cli._id_groups("none") == []
    for bad in ("0", "-3", "often"):
        with pytest.raises(Exception, match="rows"):
            cli._feedback_every(bad)
    with pytest.raises(Exception, match="item_id"):
        cli._id_groups("item_id,*genre")
    assert cli._id_bits("20") == 20
    for bad in ("0", "25", "auto"):
        with pytest.raises(Exception, match=r"\[1, 24\]"):
            cli._id_bits(bad)


def test_a_popularity_cross_is_replayed_with_the_keys_a_server_would_serve():
    # The cross's bucket reads the item table's count when a row is served. Keys computed ahead
    # of the stream would all see the empty memory (bucket 0): the replay must compute them
    # batch by batch and write each row where it was read, as predict + a write by keys do.
    import reloop2_tf as r2
    from reloop2_tf.evaluation import streaming

    rng = np.random.default_rng(0)
    n, d, every = 600, 4, 100
    hidden = rng.normal(size=(n, d)).astype(np.float32)
    feats = {"item": rng.integers(0, 4, n).astype(str), "user": rng.integers(0, 6, n).astype(str)}
    logits = rng.normal(size=n).astype(np.float32)
    labels = (rng.random(n) < 0.4).astype(np.float32)

    def fresh():
        mem = r2.LSHErrorMemory(num_tables=2, num_bits=3, id_bits=8,
                                id_groups=["item", ("user", "item:popularity")])
        mem.build([None, d])
        return r2.ErrorCompensation(mem)

    replayed, by_hand = fresh(), fresh()
    inputs = streaming.memory_inputs(replayed.memory, hidden, feats)
    ahead = fresh().memory.keys(hidden, feats).numpy()  # what the replay used to do
    streaming.replay_encoded(replayed, logits, inputs, labels, feedback_windows([n], every))
    served = []
    for a in range(0, n, every):
        rows = slice(a, a + every)
        out = by_hand.compensate(logits[rows], hidden[rows], {k: v[rows] for k, v in feats.items()})
        by_hand.update_memory_by_keys(out["memory_keys"], out["base_probability"], labels[rows])
        served.append(out["memory_keys"].numpy())
    np.testing.assert_array_equal(replayed.memory.snapshot().numpy(),
                                  by_hand.memory.snapshot().numpy())
    served = np.concatenate(served)
    np.testing.assert_array_equal(served[:every], ahead[:every])  # served by the empty memory
    cross = replayed.memory.num_tables + replayed.memory.id_tables.index(("user", "item:popularity"))
    assert (served[:, cross] != ahead[:, cross]).mean() > 0.5  # later rows: their own counts


def _run(seed: int, auc: float, gauc: float, logloss: float) -> dict:
    """A results.json with static and one method whose figures are static's plus the given."""
    static = {"auc": 0.70, "gauc": 0.68, "logloss": 0.60}
    method = {"auc": static["auc"] + auc, "gauc": static["gauc"] + gauc,
              "logloss": static["logloss"] + logloss}
    return {"dataset": "ml-1m", "config": {"model": "dcn"}, "seed": seed,
            "methods": {"static": static, "reloop2": method},
            "lift_vs_static": {"reloop2": {"auc": auc, "gauc": gauc, "logloss": logloss}}}


def test_a_seed_summary_is_the_mean_and_sample_sd_of_the_runs():
    from reloop2_tf.evaluation import seeds

    summary = seeds.summarize_seeds([_run(0, 0.010, 0.006, -0.010), _run(1, 0.008, 0.004, -0.012),
                                     _run(2, 0.012, 0.005, -0.011)])
    assert summary["seeds"] == [0, 1, 2] and summary["model"] == "dcn"
    gauc = summary["methods"]["reloop2"]["lift_gauc"]
    assert gauc["values"] == [0.006, 0.004, 0.005]
    assert gauc["mean"] == pytest.approx(0.005) and gauc["sd"] == pytest.approx(0.001)
    assert summary["methods"]["reloop2"]["logloss"]["mean"] == pytest.approx(0.589)
    assert "lift_gauc" not in summary["methods"]["static"]
    assert summary["methods"]["static"]["auc"]["sd"] == 0.0
    one = seeds.summarize_seeds([_run(4, 0.01, 0.005, -0.01)])
    assert one["methods"]["reloop2"]["lift_auc"]["sd"] is None
    text = seeds.format_seed_table(summary)
    assert "+0.50 ± 0.10" in text and "+0.60 +0.40 +0.50" in text


def test_runs_of_other_methods_models_or_the_same_seed_are_not_summarized():
    from reloop2_tf.evaluation import seeds

    other = _run(1, 0.01, 0.005, -0.01)
    other["methods"]["item-bias"] = other["methods"]["reloop2"]
    with pytest.raises(ValueError, match="different methods"):
        seeds.summarize_seeds([_run(0, 0.01, 0.005, -0.01), other])
    din = _run(1, 0.01, 0.005, -0.01)
    din["config"]["model"] = "din"
    with pytest.raises(ValueError, match="different logs, models"):
        seeds.summarize_seeds([_run(0, 0.01, 0.005, -0.01), din])
    with pytest.raises(ValueError, match="distinct seeds"):
        seeds.summarize_seeds([_run(0, 0.01, 0.005, -0.01), _run(0, 0.02, 0.005, -0.01)])


@pytest.mark.parametrize("argv,message", [
    (["--seeds", "0,0"], "distinct"),
    (["--seeds", "0,x"], "integers"),
    (["--seeds", "0,1", "--scenario", "flip-sudden"], "drift testbed"),
])
def test_cli_rejects_bad_seed_lists_in_one_line(capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--dataset", "ml-100k", "--output", str(tmp_path), *argv])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.slow
def test_seeds_run_the_benchmark_once_per_seed_and_summarize_them(tmp_path, capsys):
    out = tmp_path / "seeds"
    assert cli.main(["bench", "--dataset", "ml-100k", "--slots", "3", "--epochs", "1",
                     "--no-sweep", "--methods", "static,item-bias", "--seeds", "3,5",
                     "--output", str(out)]) == 0
    runs = [json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (3, 5)]
    assert [r["seed"] for r in runs] == [3, 5]
    # The seed reached the base model: two different static models.
    assert runs[0]["methods"]["static"]["auc"] != runs[1]["methods"]["static"]["auc"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [3, 5]
    lift = summary["methods"]["item-bias"]["lift_gauc"]
    assert lift["values"] == [r["lift_vs_static"]["item-bias"]["gauc"] for r in runs]
    assert lift["mean"] == pytest.approx(sum(lift["values"]) / 2)
    assert (out / "seeds.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "seeds 3, 5" in printed and "item-bias" in printed


def test_the_seeds_summary_counts_the_seeds_where_a_head_to_head_interval_clears_zero():
    from reloop2_tf.evaluation import seeds

    def run(seed, gauc, ci):
        figures = {"auc": 0.7, "gauc": 0.7, "logloss": 0.6}
        return {"dataset": "d", "config": {"model": "dcn", "feedback_every": 1000},
                "split": {"rows": 10}, "seed": seed,
                "methods": {"static": figures, "reloop2": figures},
                "lift_vs_static": {"reloop2": {"auc": 0.0, "gauc": 0.0, "logloss": 0.0}},
                "head_to_head": {"reloop2 vs item-bias": {
                    "auc": 0.01, "gauc": gauc, "logloss": -0.001, "gauc_ci95": ci}}}

    runs = [run(0, 0.002, [0.001, 0.003]), run(1, 0.001, [-0.001, 0.003]),
            run(2, -0.003, [-0.004, -0.002])]
    summary = seeds.summarize_seeds(runs)
    pair = summary["head_to_head"]["reloop2 vs item-bias"]
    assert pair["gauc"]["values"] == [0.002, 0.001, -0.003]
    assert pair["gauc"]["mean"] == pytest.approx(0.0)
    assert (pair["gauc_seeds_above"], pair["gauc_seeds_below"]) == (1, 1)
    assert "reloop2 vs item-bias" in seeds.format_seed_table(summary)
    # A pair that one run lacks (a run from before the pairs existed) is left out.
    del runs[1]["head_to_head"]
    assert seeds.summarize_seeds(runs)["head_to_head"] == {}


def test_the_test_memory_starts_from_the_trust_its_setting_learnt_on_validation(ml100k):
    """``carry_trust``: the combiner's sums after a replay of the validation stream are what the
    same memory setting starts the test stream with (a cold start serves the base first)."""
    from reloop2_tf.models import build_model

    df = ml100k.iloc[:6000]
    config = benchmark.BenchConfig(dataset="ml-100k", num_slots=2, sweep=False,
                                   warm_start_rows=1000, center_rows=2000, feedback_every=500)
    spec = benchmark.spec_for_frame(df)
    base = build_model("dcn", spec)  # untrained: its errors are for the memory to learn
    validation = benchmark._Stream(df.iloc[3000:4500], spec, 2)
    test = benchmark._Stream(df.iloc[4500:], spec, 2)
    setting = benchmark.MemoryConfig(id_groups=[["item_id"], ["user_id", "genre"]])
    learnt = benchmark._ValidationTrust(
        benchmark._Probe(base, spec, df.iloc[:3000], validation, config), seed=0)
    curvature, moment = learnt(setting)
    by_hand = setting.layer(0)
    learnt.probe.replay(by_hand)
    np.testing.assert_array_equal(curvature, by_hand.memory.trust_sums()[0].numpy())
    np.testing.assert_array_equal(moment, by_hand.memory.trust_sums()[1].numpy())
    assert learnt.trust(setting) == by_hand.trust().numpy().tolist()
    assert np.abs(learnt.trust(setting)).sum() > 0.1
    assert learnt(benchmark.MemoryConfig(id_groups=[["item_id"]], self_tuning=False)) is None
    # What the sweep already replayed is kept, not replayed again.
    other = benchmark.MemoryConfig(id_groups=[["item_id"]])
    swept = other.layer(0)
    learnt.probe.replay(swept)
    replays, replay = [], learnt.probe.replay
    learnt.probe.replay = lambda *args, **kwargs: replays.append(1) or replay(*args, **kwargs)
    learnt.keep(other, swept)
    np.testing.assert_array_equal(learnt(other)[1], swept.memory.trust_sums()[1].numpy())
    assert replays == []
    learnt.probe.replay = replay
    assert benchmark._ValidationTrust(None, 0)(setting) is None

    probe = benchmark._Probe(base, spec, df.iloc[:4500], test, config)
    assert len(probe.warm_labels) == 1000
    for rows, written in ((0, 0), (10**6, 4500)):  # none, and the whole training period
        other = benchmark._Probe(base, spec, df.iloc[:4500], test,
                                 dataclasses.replace(config, warm_start_rows=rows))
        assert len(other.warm_labels) == written
        comp = setting.layer(0)
        other.replay(comp)  # the warm rows, then the 1,500 test rows
        weight = float(comp.memory.snapshot()[comp.memory.totals_row, 0])
        assert weight == pytest.approx(written + 1500, rel=0.02)
    cold = probe.replay(setting.layer(0))
    carried = probe.replay(setting.layer(0), trust_sums=(curvature, moment))
    first = slice(0, 500)  # served before any test label came back
    np.testing.assert_array_equal(cold["probability"][first], cold["base_probability"][first])
    assert np.abs(carried["probability"][first] - carried["base_probability"][first]).mean() > 1e-3
    np.testing.assert_array_equal(carried["base_probability"], cold["base_probability"])
    # The sums are set after the warm start (whose rows would age them), as a new model
    # version's exported tables come before the trust handed to it.
    from reloop2_tf.evaluation import streaming
    from reloop2_tf._keras import tf

    by_hand = setting.layer(0)
    by_hand.memory.build(tf.TensorShape([None, probe.hidden.shape[1]]))
    by_hand.memory.set_center(probe.center_vector)
    streaming.warm_start(by_hand, probe.warm_logits, streaming.memory_inputs(
        by_hand.memory, probe.warm_hidden, probe.warm_features), probe.warm_labels,
        feedback_windows([len(probe.warm_labels)], 500))
    by_hand.memory.set_trust_sums(curvature, moment)
    keys = streaming.memory_inputs(by_hand.memory, probe.hidden[first],
                                   {k: v[first] for k, v in test.features.items()})
    out = by_hand.compensate_keys(probe.logits[first], keys)
    np.testing.assert_allclose(carried["probability"][first], out["probability"].numpy(),
                               rtol=1e-6, atol=1e-7)


def test_every_updated_model_takes_over_the_memory_as_it_stands(monkeypatch, ml100k):
    """``incremental+reloop2``: after each fine-tuning pass the new model serves the memory the
    previous one wrote, as a new version of a served model does; nothing is rebuilt, so with
    updates that change nothing it serves exactly what ``reloop2`` serves, and with real
    updates every row is written once."""
    from reloop2_tf.models import build_model

    df = ml100k.iloc[:6000]
    config = benchmark.BenchConfig(dataset="ml-100k", num_slots=3, sweep=False,
                                   warm_start_rows=1000, center_rows=2000, feedback_every=500)
    spec = benchmark.spec_for_frame(df)
    base = build_model("dcn", spec)
    test = benchmark._Stream(df.iloc[4500:], spec, 3)
    setting = benchmark.MemoryConfig(id_groups=[["item_id"], ["user_id", "genre"]])
    probe = benchmark._Probe(base, spec, df.iloc[:4500], test, config)
    served = probe.replay(setting.layer(0))["probability"]
    history = (probe.warm_features, probe.warm_labels, probe.warm_windows)

    def incremental(compensation, **changes):
        return benchmark._incremental(base, test, dataclasses.replace(config, **changes),
                                      compensation=compensation, center=probe.center,
                                      history=history)

    with monkeypatch.context() as patch:
        patch.setattr(benchmark, "_fine_tune", lambda *args: None)
        np.testing.assert_allclose(incremental(setting.layer(0)), served, rtol=1e-5, atol=1e-6)
    comp = setting.layer(0)
    moved = incremental(comp, incremental_learning_rate=1e-2)
    assert np.abs(moved - served).max() > 1e-3  # the updates moved the model
    weight = float(comp.memory.snapshot()[comp.memory.totals_row, 0])
    assert weight == pytest.approx(1000 + 1500, rel=0.02)  # warm rows and test rows, once


def test_validation_sweeps_only_what_the_chosen_methods_run(monkeypatch, ml100k):
    """The paper sketch's, the k-NN memory's and each baseline's sweep run only for a method
    that is run; the default memory's settings are chosen whatever runs, the same way."""
    from reloop2_tf.evaluation import baselines
    from reloop2_tf.models import build_model

    df = ml100k.iloc[:5000]
    config = benchmark.BenchConfig(dataset="ml-100k", num_slots=2, quick=True,
                                   warm_start_rows=1000, center_rows=2000, feedback_every=500)
    config.memory.id_groups = [["item_id"]]
    spec = benchmark.spec_for_frame(df)
    probe = benchmark._Probe(build_model("dcn", spec), spec, df.iloc[:3500],
                             benchmark._Stream(df.iloc[3500:], spec, 2), config)
    calls = []
    for cls in (baselines.BiasMemory, baselines.FTRLOffset):
        replay = cls.replay
        monkeypatch.setattr(cls, "replay", lambda self, *a, _r=replay, **k:
                            calls.append(type(self).__name__) or _r(self, *a, **k))
    memories = []
    replay = probe.replay
    probe.replay = lambda comp, *a, **k: memories.append(comp.memory.name) or replay(comp, *a, **k)

    best, paper, knn, bias, ftrl, report = benchmark.sweep_memory(
        probe, dataclasses.replace(config), False, methods=("static", "reloop2", "item-bias"))
    def replays(grid, start):  # each candidate once: a later parameter's current value was met
        values = list(grid.items())
        return len(values[0][1]) + sum(len(v) - (getattr(start, name) in v)
                                       for name, v in values[1:])

    default_points = replays(benchmark.QUICK_DEFAULT_SWEEP_GRID, config.memory)
    assert len(memories) == default_points and calls == ["BiasMemory"] * len(benchmark.BIAS_GRID)
    assert set(report) == {"static", "reloop2", "bias", "chosen"}
    assert set(report["bias"]) == {"item-bias"}
    assert set(report["chosen"]) == {"reloop2", "item-bias"}
    assert paper == config.paper and knn == config.knn and ftrl == config.ftrl
    assert bias["user-bias"] == config.bias["user-bias"]

    memories.clear(), calls.clear()
    every = benchmark.sweep_memory(probe, dataclasses.replace(config), False)
    assert every[0] == best and every[5]["reloop2"] == report["reloop2"]
    assert every[3]["item-bias"] == bias["item-bias"]
    paper_points = replays(benchmark.QUICK_SWEEP_GRID, config.paper)
    assert paper_points < sum(len(v) for v in benchmark.QUICK_SWEEP_GRID.values())
    assert len(memories) == default_points + paper_points
    assert calls.count("FTRLOffset") == len(benchmark.FTRL_GRID)
    assert calls.count("BiasMemory") == 2 * len(benchmark.BIAS_GRID)
    assert set(every[5]["chosen"]) == {"reloop2", "lsh", "knn", "item-bias", "user-bias",
                                       "ftrl-offset"}
    assert every[2].compensation_weight == every[1].compensation_weight  # quick: k-NN's lambda


def test_window_gauc_orders_a_users_rows_within_one_feedback_window():
    """A per-user offset that changes between feedback windows (a user's running residual) is
    one constant over the rows of a window: it leaves the window gAUC exactly as it was, and
    moves the gAUC that pools a user's rows over the stream."""
    from reloop2_tf.evaluation import metrics

    users = np.array(["a", "b", "a", "a", "b", "a", "b", "a", "b", "a"])
    groups = benchmark.window_groups(users, feedback_windows([6, 4], 2))
    # Slot 1: windows rows 0-1, 2-3, 4-5; slot 2: rows 6-7, 8-9; a group per user in each.
    assert groups.tolist() == [0, 1, 2, 2, 3, 4, 5, 6, 7, 8]
    by_slot = benchmark.window_groups(users, feedback_windows([6, 4], None))
    assert by_slot.tolist() == [0, 1, 0, 0, 1, 0, 2, 3, 2, 3]

    rng = np.random.default_rng(0)
    n = 4000
    users = rng.integers(0, 40, n).astype(str)
    labels = (rng.random(n) < 0.5).astype(np.float32)
    logits = rng.normal(size=n) + 0.8 * (labels - 0.5)
    windows = benchmark.window_groups(users, feedback_windows([2000, 2000], 250))
    window = np.concatenate([np.arange(2000) // 250, 8 + np.arange(2000) // 250])
    offset = rng.normal(size=(40, 16))[users.astype(int), window]  # per user, per window
    base, moved = 1 / (1 + np.exp(-logits)), 1 / (1 + np.exp(-(logits + 2.0 * offset)))
    assert metrics.gauc(labels, moved, windows) == pytest.approx(
        metrics.gauc(labels, base, windows), abs=1e-12)
    assert abs(metrics.gauc(labels, moved, users) - metrics.gauc(labels, base, users)) > 0.02
