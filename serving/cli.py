"""``reloop2 serve``, ``reloop2 replay`` (SPEC section 6) and ``reloop2 memory keep``.

``serve`` runs the development server (``reloop2_serving.dev_server``), because the real
``tensorflow_model_server`` cannot be installed here; it prints the equivalent command for the
real server. ``replay`` streams a time-ordered canonical CSV through a server
(``reloop2_serving.replay``): each batch is scored first, then its labels are written back with
``update_memory``, and the base and compensated predictions are compared at the end.

``memory keep`` runs the durable-memory sidecar (``reloop2_serving.keep``) beside any server.

The command line imports the server and the replay, never the reverse.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reloop2_serving.flags import add_serve_arguments
from reloop2_serving.replay import format_results, replay


def register(subparsers) -> None:
    """Adds the ``serve`` and ``replay`` subcommands to ``reloop2``'s subparsers.

    TensorFlow is imported only when a command runs, so ``reloop2 --help`` stays fast.
    """
    serve = subparsers.add_parser(
        "serve", help="serve a ReLoop2 SavedModel over gRPC and REST (development server)",
        description="Serve a SavedModel, or the newest version of a TF-Serving base dir, with a "
                    "PredictionService-compatible development server on 127.0.0.1.")
    add_serve_arguments(serve)
    serve.set_defaults(func=_serve)

    replay = subparsers.add_parser(
        "replay", help="stream a canonical CSV through predict, then update_memory",
        description="Score a time-ordered canonical CSV batch by batch, writing each batch's "
                    "labels back after scoring it; print AUC, gAUC and logloss of the base and "
                    "the compensated predictions.")
    replay.add_argument("--data", required=True, help="a prepared dir (data.csv) or a CSV file")
    replay.add_argument("--target", required=True, help="HOST:PORT of the server")
    replay.add_argument("--model-name", default="reloop2")
    replay.add_argument("--batch-size", type=int, default=256,
                        help="rows per predict/update round trip (the feedback granularity)")
    replay.add_argument("--max-rows", type=int, default=None, help="replay only the first N rows")
    replay.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    replay.add_argument("--output", default=None, help="also write the results as JSON here")
    replay.set_defaults(func=_replay)


def register_keep(memory_subparsers) -> None:
    """Adds ``keep`` to the subparsers of the ``reloop2 memory`` group."""
    keep = memory_subparsers.add_parser(
        "keep", help="sidecar: snapshot a server's memory to a store, restore it on reloads",
        description="Snapshot the memory of the model served at --target into --store every "
                    "--snapshot-seconds, and restore the newest valid snapshot when a new "
                    "version appears or the server restarts. GET /ready answers 200 only once "
                    "the current version's memory is restored; GET /healthz reports the state.")
    keep.add_argument("--target", required=True, help="HOST:PORT of the gRPC server")
    keep.add_argument("--store", required=True,
                      help="a folder or tf.io.gfile URL (gs://...) for the snapshots")
    keep.add_argument("--model-name", default="reloop2")
    keep.add_argument("--snapshot-seconds", type=float, default=30.0)
    keep.add_argument("--keep-snapshots", type=int, default=3)
    keep.add_argument("--poll-seconds", type=float, default=1.0,
                      help="seconds between GetModelStatus polls")
    keep.add_argument("--timeout", type=float, default=30.0, help="seconds per gRPC call")
    keep.add_argument("--http-host", default="127.0.0.1",
                      help="address of /ready and /healthz (0.0.0.0 for a kubelet probe)")
    keep.add_argument("--http-port", type=int, default=8510, help="0 picks a free port")
    keep.set_defaults(func=_keep)


def _keep(args: argparse.Namespace) -> int:
    from reloop2_serving import signals
    from reloop2_serving.keep import Keeper, probe_server
    from reloop2_serving.store import MemoryStore

    try:
        if not args.snapshot_seconds > 0:
            raise ValueError(f"--snapshot-seconds must be > 0, got {args.snapshot_seconds}")
        store = MemoryStore(args.store, args.model_name, args.keep_snapshots)
        keeper = Keeper(args.target, store, args.model_name, args.snapshot_seconds,
                        args.poll_seconds, args.timeout)
        http = probe_server(keeper, args.http_host, args.http_port)
    except (ValueError, OSError) as err:
        print(f"reloop2 memory keep: error: {err}", file=sys.stderr)
        return 2
    stop = signals.StopSignal()
    keeper.start()
    host, port = http.server_address[:2]
    print(f"reloop2 memory keep: keeping {args.target} model '{args.model_name}' in {store.url}; "
          f"probes on http://{host}:{port}/ready", flush=True)
    stop.wait()
    keeper.stop()
    http.shutdown()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from reloop2_serving import dev_server

    rest = f" --rest_api_port={args.rest_port}" if args.rest_port else ""
    print("note: the real TF Serving equivalent is `tensorflow_model_server --port="
          f"{args.port}{rest} --model_name={args.model_name} --model_base_path=<absolute base "
          "dir>`; this is the development server.", flush=True)
    return dev_server.run(args)


def _fail(message: str) -> int:
    print(f"reloop2 replay: error: {message}", file=sys.stderr)
    return 2


def _replay(args: argparse.Namespace) -> int:
    import grpc

    from reloop2_tf.data import DataError

    try:
        results = replay(args.data, args.target, args.model_name, args.batch_size,
                         args.max_rows, args.timeout, progress=True)
    except (DataError, ValueError, OSError) as err:
        return _fail(str(err).strip().splitlines()[0] if str(err).strip() else repr(err))
    except grpc.RpcError as err:
        details = (err.details() or "").strip().splitlines()
        return _fail(f"{args.target}: {err.code().name}: {details[0] if details else ''}")
    results.pop("predictions")
    print(format_results(results))
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0
