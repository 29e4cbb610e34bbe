"""The ``reloop2`` command line (SPEC section 6)."""

from __future__ import annotations

import argparse
import logging
import sys


def _bench(args) -> int:
    if args.dataset != "synthetic":
        raise SystemExit(f"reloop2 bench: dataset {args.dataset!r} is not supported yet; "
                         "use --dataset synthetic")
    from reloop2_tf import synthetic_bench

    results = synthetic_bench.run(args.output, seed=args.seed, quick=args.quick)
    print(synthetic_bench.format_table(results))
    print(f"results: {args.output}/results.json, plot: {args.output}/slots.png "
          f"({results['wall_seconds']} s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reloop2", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="streaming benchmark: static vs ReLoop2 memories")
    bench.add_argument("--dataset", required=True, choices=["synthetic"])
    bench.add_argument("--output", required=True, help="directory for results.json and plots")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--quick", action="store_true", help="a smaller run for tests and CI")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
