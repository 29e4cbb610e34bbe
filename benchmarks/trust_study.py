"""The design study behind the self-tuning combiner's defaults (docs/benchmarks.md).

    python benchmarks/trust_study.py dump --dataset ml-1m --model dcn --out runs/study/ml1m-dcn.npz
    python benchmarks/trust_study.py run runs/study/*.npz
    python benchmarks/trust_study.py shift runs/study/ml-1m-dcn.npz
    python benchmarks/trust_study.py crosses runs/study/ml-1m-bare.npz   # dumped with --csv
    python benchmarks/trust_study.py ranking runs/study/ml-100k-dcn.npz --item-file ml-100k.item
    python benchmarks/trust_study.py delay runs/study17/ml-1m-dcn-s1.npz
    python benchmarks/trust_study.py collisions runs/study17/ml-1m-dcn-s*.npz --dataset ml-1m

``dump`` trains the benchmark's base model (``reloop2 bench`` defaults, no sweep) and saves its
test stream and warm-start rows; ``run`` replays each combiner variant over them in NumPy
(``benchmarks/trust_study/replica.py``) and prints AUC, gAUC, logloss and the lift over static.
``shift`` replays the drift testbed's label shift (from test row 40,000 every positive turned
negative with probability 0.5) and prints each slot's gAUC against static's (docs/drift.md).
``crosses`` adds the user or the item crossed with an SRP bucket of the hidden vector, or the
user crossed with a k-means cluster of the base model's item embeddings (docs/benchmarks.md,
"A log with ids only"). ``ranking`` tries combiner variants aimed at per-user ranking (among them
the trust fit on features demeaned by each user's running means), the item crossed with the
user's activity or with each of the user's most recent items, two hindsight fits of the
trust, and the user crossed with every genre of the item (``trust_study/ranking.py``).
``delay`` replays the default memory and item-bias with labels every 1,000, 100 and 10 rows,
and the memory with labels a fixed time after their row, and prints what its keys would give
in hindsight (``trust_study/delay.py``). ``collisions`` gives every key of a table a random
bucket of its size (``trust_study/collisions.py``) and compares sizing rules for the id tables
over several hash draws (docs/history/benchmarks.md, "Each id table sized to its own keys").
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

_OLD = dict(centred=False, global_ridge=1.0, trust_half_life=None, recent_half_life=None,
            level_gate=0.0, net=False)
VARIANTS = {
    "before (one step from zero, 1 prior, ridge 1, warm trust)":
        dict(priors=(5.0,), logit=False, ridge=1.0, online=False, warm_trust=True, **_OLD),
    "+ trust from served rows only":
        dict(priors=(5.0,), logit=False, ridge=1.0, online=False, **_OLD),
    "+ online Newton": dict(priors=(5.0,), logit=False, ridge=1.0, **_OLD),
    "+ base-logit column": dict(priors=(5.0,), ridge=1.0, **_OLD),
    "+ two shrinkages (2, 20), ridge 1": dict(ridge=1.0, **_OLD),
    "+ ridge 10 (the 2026-12-01 default)": dict(centred=False, global_ridge=10.0,
                                                trust_half_life=None, recent_half_life=None,
                                                level_gate=0.0, net=False),
    "+ base logit centred": dict(global_ridge=10.0, trust_half_life=None, recent_half_life=None,
                                 level_gate=0.0, net=False),
    "+ ridge 100 on base logit and bias": dict(trust_half_life=None, recent_half_life=None,
                                               level_gate=0.0, net=False),
    "+ the combiner's sums forget at 20k rows": dict(recent_half_life=None, level_gate=0.0,
                                                     net=False),
    "+ a recent item table (half-life 5k)": dict(level_gate=0.0, net=False),
    "+ the level moves past 2 standard errors": dict(net=False),
    "default: + every group net of the stream's shift": dict(),
    "default, level gate 1 standard error": dict(level_gate=1.0),
    "default, recent half-life 10k": dict(recent_half_life=1e4),
    "default, trust half-life 10k": dict(trust_half_life=1e4),
    "default, trust half-life 50k": dict(trust_half_life=5e4),
    "default, ridge 3": dict(ridge=3.0),
    "default, ridge 30": dict(ridge=30.0),
    "default + bare user group": dict(user=True),
    "default, two combiners (20k, 100k) mixed by experts": dict(experts=True),
}


def dump(args) -> None:
    from reloop2_tf import data
    from reloop2_tf.evaluation import benchmark as b

    if args.csv:
        df = data.load_csv(args.csv, args.user_col, args.item_col, args.time_col, args.label_col,
                           label_threshold=args.label_threshold)
    else:
        df = data.load_dataset(args.dataset, data_dir=args.data_dir)
    config = b.BenchConfig(dataset="csv" if args.csv else args.dataset, model=args.model,
                           num_slots=args.slots, sweep=False, seed=args.seed)
    cut = int(len(df) * config.train_fraction)
    spec = b.spec_for_frame(df, history_length=config.history_length)
    test = b._Stream(df.iloc[cut:], spec, config.num_slots)
    probe = b._Probe(b._train(df.iloc[:cut], spec, config, False), spec, df.iloc[:cut], test,
                     config)
    item_vec = _item_vectors(probe.base, test.features), _item_vectors(probe.base, probe.warm_features)
    item_vec = {} if item_vec[0] is None else {"item_vec": item_vec[0], "warm_item_vec": item_vec[1]}
    # Popularity crosses are read off the memory: the replica's OnlinePopularity adds them.
    groups = [g for g in b.id_groups_for_frame(df) if not any(b.popularity_of(c) for c in g)]
    cols = sorted({c for g in groups for c in g} | {"user_id"}
                  | ({"history"} & set(df.columns)))
    np.savez(args.out, logits=probe.logits, labels=test.labels, warm_logits=probe.warm_logits,
             warm_labels=probe.warm_labels, groups=np.array(["*".join(g) for g in groups]),
             cols=np.array(cols),
             hidden=probe.hidden.astype(np.float16), warm_hidden=probe.warm_hidden.astype(np.float16),
             center=probe.center_vector, **item_vec,
             times=df.iloc[cut:]["timestamp"].to_numpy(np.float64),
             warm_times=probe.warm_df["timestamp"].to_numpy(np.float64),
             **{"t_" + c: df.iloc[cut:][c].astype(str).to_numpy() for c in cols},
             **{"w_" + c: probe.warm_df[c].astype(str).to_numpy() for c in cols})
    print(f"saved {args.out}: {len(test.labels)} test rows, groups {groups}")


def _item_vectors(model, features) -> np.ndarray | None:
    """Every row's item embedding (the base model's ``embedding_item_id`` output), float16;
    None for a model without that layer."""
    from reloop2_tf._keras import keras

    def find(layer):
        for inner in getattr(layer, "layers", []):
            if inner.name == "embedding_item_id":
                return layer, inner
            found = find(inner)
            if found:
                return found
        return None

    found = find(model)
    if found is None:
        return None
    owner, table = found
    sub = keras.Model(owner.inputs, table.output)
    return sub.predict({k: features[k] for k in sub.input_names}, batch_size=8192,
                       verbose=0).reshape(len(next(iter(features.values()))), -1).astype(np.float16)


def _versus_static(s, p) -> tuple[dict, dict]:
    """AUC, gAUC and logloss of predictions ``p`` on stream ``s``, and static's."""
    from reloop2_tf.evaluation import metrics
    from trust_study.replica import sigmoid

    return (metrics.evaluate(s.y, np.clip(p, 1e-7, 1 - 1e-7), s.users),
            metrics.evaluate(s.y, sigmoid(s.z), s.users))


def run(args) -> None:
    from trust_study.replica import Experts, Replica, Stream, bias_memory

    for path in args.streams:
        s = Stream(path)
        print(f"\n{path}\n{'variant':58s}   AUC   gAUC logloss    ΔAUC  ΔgAUC  Δlogloss")
        rows = {}
        for name, kw in VARIANTS.items():
            kind = Experts if kw.get("experts") else Replica
            rows[name] = kind(s, **{k: v for k, v in kw.items() if k not in ("user", "experts")},
                              groups=s.groups + [("user_id",)] if kw.get("user") else None).run()
        rows["item-bias λ .3 γ 0 prior 5"] = bias_memory(s)
        rows["item-bias λ .3 γ 1 prior 5"] = bias_memory(s, gamma=1.0)
        rows["user-bias λ .3 γ 0 prior 20"] = bias_memory(s, key="user_id", prior=20.0)
        for name, p in rows.items():
            m, static = _versus_static(s, p)
            print(f"{name:58s} {100 * m['auc']:5.2f} {100 * m['gauc']:6.2f} {m['logloss']:.4f}  "
                  f"{100 * (m['auc'] - static['auc']):+6.2f} {100 * (m['gauc'] - static['gauc']):+6.2f}"
                  f"  {m['logloss'] - static['logloss']:+.4f}")


def shift(args) -> None:
    """Each slot's gAUC lift over static under the label shift (and without it), for the
    default combiner, the default without its item group, and the oracle netting."""
    from reloop2_tf.evaluation import metrics
    from trust_study.replica import OracleNet, Replica, Stream, sigmoid, thin_positives

    def slots(s, p):
        bounds = np.linspace(0, len(s.y), args.slots + 1).astype(int)
        lift = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            mine = metrics.evaluate(s.y[a:b], np.clip(p[a:b], 1e-7, 1 - 1e-7), s.users[a:b])
            static = metrics.evaluate(s.y[a:b], sigmoid(s.z[a:b]), s.users[a:b])
            lift.append(100 * (mine["gauc"] - static["gauc"]))
        return " ".join(f"{d:+6.2f}" for d in lift)

    for path in args.streams:
        print(f"\n{path}: ΔgAUC vs static per slot of {len(Stream(path).y) // args.slots} rows "
              f"(shift from row {args.start})")
        s = Stream(path)
        print(f"{'default, no shift':44s} {slots(s, Replica(s).run())}")
        variants = {
            "default": lambda s, scale: Replica(s),
            "default without the item group": lambda s, scale: Replica(
                s, groups=[g for g in s.groups if g != ("item_id",)]),
            "read net of nothing (net=False)": lambda s, scale: Replica(s, net=False),
            "oracle: each row net of the true shift": lambda s, scale: OracleNet(s, scale),
        }
        for name, make in variants.items():
            s = Stream(path)
            scale = thin_positives(s, start=args.start)
            print(f"{name:44s} {slots(s, make(s, scale).run())}")


def crosses(args) -> None:
    """The default groups, then the user or the item crossed with an SRP bucket of the hidden
    vector (4, 6 and 8 bits), the user crossed with an item cluster (8 to 64), and the user
    crossed with the item's popularity bucket (from the warm rows; then read off the memory's
    own item table at serving time, ``OnlinePopularity``)."""
    from trust_study.replica import (OnlinePopularity, Replica, Stream, add_item_clusters,
                                     add_item_popularity, add_srp_columns)

    for path in args.streams:
        groups = Stream(path).groups
        print(f"\n{path}: groups {groups}")
        variants = {"default": lambda s: Replica(s, groups=groups)}
        if "center" in np.load(path, allow_pickle=True).files:  # dumped with hidden vectors
            for side in ("user_id", "item_id"):
                for bits in (4, 6, 8):
                    variants[f"+ {side} x srp{bits}"] = (lambda s, side=side, bits=bits: Replica(
                        s, groups=groups + [(side, add_srp_columns(s, path, bits))]))
            for k in (8, 16, 32, 64):
                variants[f"+ user_id x item_cluster{k}"] = (lambda s, k=k: Replica(
                    s, groups=groups + [("user_id", add_item_clusters(s, path, k))]))
        variants["+ user_id x item_pop (warm rows)"] = (
            lambda s: Replica(s, groups=groups + [("user_id", add_item_popularity(s))]))
        variants["+ user_id x item_pop (online)"] = OnlinePopularity
        for label, make in variants.items():
            s = Stream(path)
            m, st = _versus_static(s, make(s).run())
            print(f"{label:32s} ΔAUC {100 * (m['auc'] - st['auc']):+.2f} "
                  f"ΔgAUC {100 * (m['gauc'] - st['gauc']):+.2f} logloss {m['logloss']:.4f}")


def ranking(args) -> None:
    """The default against combiner variants aimed at per-user ranking, more crosses (the item
    with the user's activity, with each of the user's most recent items), two hindsight fits
    of its trust (oracles), and ``user x`` every genre of the item in place of ``user x genre``
    (docs/history/benchmarks.md, "Sixth session" and "Seventh session")."""
    from trust_study.ranking import (RecentItems, Tokens, UserActivity, Variant, genre_lists,
                                       hindsight)
    from trust_study.replica import OnlinePopularity, Stream

    tokens = genre_lists(args.item_file, args.row_ids) if args.item_file else None
    variants = {
        "default": lambda s: OnlinePopularity(s),
        "no pooling column at n = 20": lambda s: Variant(s, no_pool20=True),
        "crosses centred at n = 1": lambda s: Variant(s, parent_prior=1.0),
        "trust half from per-user demeaned batches": lambda s: Variant(s, within=0.5),
        "recent user residual in the fit only": lambda s: Variant(s, fit_user=500.0),
        "trust quarter from running per-user means": lambda s: Variant(s, within=0.25,
                                                                       running=True),
        "trust half from running per-user means": lambda s: Variant(s, within=0.5, running=True),
        "trust from running per-user means": lambda s: Variant(s, within=1.0, running=True),
        "+ item x user activity (read off the memory)": lambda s: UserActivity(s),
    }
    if tokens:
        variants["user x each genre (pooled) for user x genre"] = lambda s: Tokens(s, tokens)
    recent = "+ item x each of the 4 most recent items"
    variants[recent] = lambda s: RecentItems(s)
    for path in args.streams:
        print(f"\n{path}")
        for label, make in variants.items():
            s = Stream(path)
            if label == recent and "history" not in s.test:
                continue  # dumped before dumps kept the history column
            m, st = _versus_static(s, make(s).run())
            print(f"{label:48s} ΔAUC {100 * (m['auc'] - st['auc']):+.2f} "
                  f"ΔgAUC {100 * (m['gauc'] - st['gauc']):+.3f} logloss {m['logloss']:.4f}")
        s = Stream(path)
        default = Variant(s)
        default.run()
        served = np.concatenate(default.served)
        for label, within in (("hindsight: one logistic fit of the trust", False),
                              ("hindsight: the same fit, per-user demeaned", True)):
            m, st = _versus_static(s, hindsight(s, served, within))
            print(f"{label:48s} ΔAUC {100 * (m['auc'] - st['auc']):+.2f} "
                  f"ΔgAUC {100 * (m['gauc'] - st['gauc']):+.3f} logloss {m['logloss']:.4f}")


def delay(args) -> None:
    """The default memory and item-bias with labels every 1,000 / 100 / 10 rows; the memory
    with labels ``--delays`` seconds after their row; the hindsight ceiling of its keys."""
    from trust_study.delay import Delayed, hindsight_ceiling, same_window_share
    from trust_study.replica import OnlinePopularity, Stream, bias_memory

    def line(label, s, p):
        m, st = _versus_static(s, p)
        print(f"{label:44s} ΔAUC {100 * (m['auc'] - st['auc']):+.2f} "
              f"ΔgAUC {100 * (m['gauc'] - st['gauc']):+.2f} logloss {m['logloss']:.4f}", flush=True)

    for path in args.streams:
        s = Stream(path)
        print(f"\n{path}: rows whose user's previous row is in the same window: "
              + ", ".join(f"{every} rows {100 * same_window_share(s.users, every):.1f} %"
                          for every in (1000, 100, 10)))
        for every in (1000, 100, 10):
            line(f"reloop2, labels every {every} rows", s, OnlinePopularity(s, every=every).run())
            line(f"item-bias, labels every {every} rows", s,
                 bias_memory(s, gamma=1.0, every=every))
        d = np.load(path)
        if "times" not in d.files:
            print("(no timestamps in this dump: dump it again for the label delays)")
        else:
            times = np.concatenate([d["warm_times"], d["times"]])
            for seconds in args.delays:
                line(f"reloop2, labels {seconds:g} s after their row", s,
                     Delayed(s, times, seconds).run())
        line("hindsight ceiling of the keys (not a method)", s, hindsight_ceiling(s))


def collisions(args) -> None:
    """The default memory with every id table of one size, and with each table sized by
    ``id_bits_for_frame`` at a few chances, each over ``--hash-seeds`` hash draws: mean and
    spread of the lift over static. The tables are sized from the log's rows before the test
    stream (``--dataset``, as ``reloop2 bench`` sizes them), else from the dump's warm rows."""
    import pandas as pd

    from reloop2_tf.data import id_bits_for_frame, load_dataset
    from reloop2_tf.layers.id_keys import long_id_tables
    from trust_study.collisions import Hashed
    from trust_study.replica import Replica, Stream

    rules = {"every table 2^18": None, "every table 2^20": None,
             "5 % per table": (0.05, 0.05), "2 % per table": (0.02, 0.02),
             "2 % per cross, 0.1 % per single feature (the default)": (0.02, 0.001)}
    log = load_dataset(args.dataset) if args.dataset else None
    for path in args.streams:
        s = Stream(path)
        frame = pd.DataFrame(s.warm) if log is None else log.iloc[:len(log) - len(s.y)]
        exact = _versus_static(s, Replica(s).run())
        print(f"\n{path}: every key apart ΔgAUC {100 * (exact[0]['gauc'] - exact[1]['gauc']):+.3f}")
        for name, chances in rules.items():
            if chances is None:
                bits = {"*".join(t): int(name[-2:]) for t in long_id_tables(s.groups)}
            else:
                bits = id_bits_for_frame(frame, s.groups, shared_bucket_chance=chances[0],
                                         single_feature_chance=chances[1])
            lifts, aucs, cells = [], [], 0
            for seed in range(args.hash_seeds):
                r = Hashed(s, lambda t: bits["*".join(t)], seed=seed)
                m, st = _versus_static(s, r.run())
                lifts.append(100 * (m["gauc"] - st["gauc"]))
                aucs.append(100 * (m["auc"] - st["auc"]))
                cells = sum(r.sizes)
            print(f"  {name:56s} ΔgAUC {np.mean(lifts):+.3f} ± {np.std(lifts):.3f}  "
                  f"ΔAUC {np.mean(aucs):+.3f}  cells {cells:,}  {bits}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--dataset", default="ml-100k")
    d.add_argument("--model", default="dcn")
    d.add_argument("--data-dir", default=None)
    d.add_argument("--csv", default=None, help="a log in reloop2 bench's CSV route instead")
    d.add_argument("--user-col", default="user_id")
    d.add_argument("--item-col", default="item_id")
    d.add_argument("--time-col", default="timestamp")
    d.add_argument("--label-col", default="label")
    d.add_argument("--label-threshold", type=float, default=None)
    d.add_argument("--slots", type=int, default=10)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("streams", nargs="+")
    t = sub.add_parser("shift")
    t.add_argument("streams", nargs="+")
    t.add_argument("--start", type=int, default=40_000, help="first shifted test row")
    t.add_argument("--slots", type=int, default=10)
    c = sub.add_parser("crosses")
    c.add_argument("streams", nargs="+")
    k = sub.add_parser("ranking")
    k.add_argument("streams", nargs="+")
    k.add_argument("--item-file", help="the log's RecBole .item file: every genre of an item")
    k.add_argument("--row-ids", action="store_true",
                   help="items are numbered by their row of the .item file (ML-1M)")
    h = sub.add_parser("collisions")
    h.add_argument("streams", nargs="+")
    h.add_argument("--hash-seeds", type=int, default=8)
    h.add_argument("--dataset", default=None,
                   help="the dumped log (ml-100k, ml-1m), to size the tables from its training rows")
    e = sub.add_parser("delay")
    e.add_argument("streams", nargs="+")
    e.add_argument("--delays", type=float, nargs="+", default=[0.0, 600.0, 3600.0, 86400.0],
                   help="label delays in seconds of the log's timestamps")
    args = parser.parse_args()
    {"dump": dump, "run": run, "shift": shift, "crosses": crosses,
     "ranking": ranking, "delay": delay, "collisions": collisions}[args.command](args)


if __name__ == "__main__":
    main()
