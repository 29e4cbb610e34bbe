"""``reloop2 memory sync``: keeps several replicas' memories equal by exchanging deltas.

``register_sync(memory_subparsers)`` adds the command to the ``reloop2 memory`` group; the
process itself is ``reloop2_serving.sync.MemorySync``. TensorFlow and grpc are imported only when
the command runs, so ``reloop2 --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
import time


def register_sync(memory_subparsers) -> None:
    """Adds ``sync`` to the subparsers of the ``reloop2 memory`` group."""
    sync = memory_subparsers.add_parser(
        "sync", help="keep the memories of several replicas equal (delta exchange)",
        description="Every --every seconds, snapshot each replica, send what it learnt since the "
                    "last round (its delta) to every other replica with memory_merge under a "
                    "deterministic write id, and heal a replica that restarted or missed a round "
                    "with memory_restore of the others' state. For teams that send each label "
                    "to one replica (docs/serving.md, section 4).")
    sync.add_argument("--targets", required=True,
                      help="HOST:PORT of every replica, comma-separated (at least two)")
    sync.add_argument("--every", type=float, default=10.0,
                      help="seconds from the start of one round to the start of the next (10)")
    sync.add_argument("--rounds", type=int, default=0,
                      help="stop after N rounds (default 0: until SIGTERM or Ctrl-C)")
    sync.add_argument("--model-name", default="reloop2")
    sync.add_argument("--timeout", type=float, default=30.0, help="seconds per gRPC call (30)")
    sync.add_argument("--retries", type=int, default=3,
                      help="retries of a call after UNAVAILABLE or DEADLINE_EXCEEDED (3)")
    sync.add_argument("--summed", action="store_true",
                      help="send each replica one merge, the sum of the others' deltas (N merges "
                           "a round instead of N(N-1))")
    sync.add_argument("--drop-fraction", type=float, default=0.01,
                      help="a replica whose memory_weight fell by more than this fraction since "
                           "the last round restarted and is healed (0.01)")
    sync.add_argument("--since", default=None, metavar="PATH",
                      help="the state every replica held when they were last equal: the "
                           "SavedModel they were started from (or its TF-Serving base dir) or a "
                           ".r2snap snapshot file; the first round then exchanges everything "
                           "learnt since. Default: each replica's memory at start")
    sync.add_argument("--sync-id", default=None,
                      help="part of every write id (default: random); unique per sync process")
    sync.set_defaults(func=_sync)


def _error(message: str) -> int:
    print(f"reloop2 memory sync: error: {message}", file=sys.stderr)
    return 2


def _sync(args: argparse.Namespace) -> int:
    """Runs rounds every ``--every`` seconds until ``--rounds`` or SIGTERM/SIGINT.

    Exit codes: 0 when stopped by a signal, or after ``--rounds`` with every replica in sync at
    the last round; 1 when the last round left a replica failed or waiting to be healed, or no
    replica answered at start; 2 for bad arguments or replicas of different memory layouts.
    """
    import signal
    import threading

    from reloop2_serving.client import parse_targets
    from reloop2_serving.sync import MemorySync, load_common_state

    try:
        targets = parse_targets(args.targets, minimum=2)
        if not args.every > 0:
            raise ValueError(f"--every must be > 0 seconds, got {args.every}")
        if args.rounds < 0:
            raise ValueError(f"--rounds must be >= 0, got {args.rounds}")
        if not args.timeout > 0:
            raise ValueError(f"--timeout must be > 0 seconds, got {args.timeout}")
        if args.retries < 0:
            raise ValueError(f"--retries must be >= 0, got {args.retries}")
        if not 0 <= args.drop_fraction < 1:
            raise ValueError(f"--drop-fraction must be in [0, 1), got {args.drop_fraction}")
        since = load_common_state(args.since) if args.since else None
        sync = MemorySync(targets, args.model_name, args.timeout, args.retries, args.sync_id,
                          args.drop_fraction, args.summed, since)
    except ValueError as err:  # bad arguments, a bad --since, or LayoutMismatch
        return _error(str(err))
    except RuntimeError as err:
        print(f"reloop2 memory sync: {err}", file=sys.stderr)
        return 1

    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    print(f"reloop2 memory sync: {len(targets)} replicas of '{args.model_name}' "
          f"(sync id {sync.sync_id}), a round every {args.every:g} s"
          + (f", {args.rounds} rounds" if args.rounds else ""), flush=True)
    last = None
    try:
        while not stop.is_set():
            started = time.monotonic()
            last = sync.sync_round()  # a round in progress is finished before a signal stops us
            if args.rounds and last.round >= args.rounds:
                break
            stop.wait(max(0.0, args.every - (time.monotonic() - started)))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sync.close()
    if stop.is_set() or last is None:
        print(f"reloop2 memory sync: stopped after {sync.round} rounds", flush=True)
        return 0
    print(f"reloop2 memory sync: {sync.round} rounds; last: {last.line()}", flush=True)
    return 0 if last.in_sync else 1
