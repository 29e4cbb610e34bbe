"""The development server's flags, shared by ``reloop2 serve`` and ``python -m reloop2_serving.dev_server``.

They live apart from both so that the server never imports the command line.
"""

from __future__ import annotations

import argparse


def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of ``reloop2 serve`` and ``python -m reloop2_serving.dev_server``."""
    parser.add_argument("--model-dir", required=True,
                        help="a SavedModel, or a TF-Serving base dir (the newest version is served)")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port; 0 picks a free one")
    parser.add_argument("--model-name", default="reloop2")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; the default keeps the server on loopback")
    parser.add_argument("--max-workers", type=int, default=16, help="gRPC worker threads")
    parser.add_argument("--poll-seconds", type=float, default=0.0,
                        help="check the base dir for a newer version every N s (0: never)")
    parser.add_argument("--rest-port", type=int, default=None,
                        help="also serve TF Serving's REST API on this port (TF Serving uses "
                             "8501; 0 picks a free one); off when not given")
    parser.add_argument("--rest-host", default="127.0.0.1",
                        help="address the REST API binds; the default keeps it on loopback")
    parser.add_argument("--memory-store", default=None,
                        help="keep the memory durable: a folder or tf.io.gfile URL (gs://...) "
                             "for snapshots; the newest valid one is restored at every load")
    parser.add_argument("--snapshot-seconds", type=float, default=30.0,
                        help="with --memory-store: seconds between snapshots (default 30)")
    parser.add_argument("--keep-snapshots", type=int, default=3,
                        help="with --memory-store: snapshots kept (default 3)")
    return parser
