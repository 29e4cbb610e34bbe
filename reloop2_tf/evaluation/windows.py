"""Feedback windows: which rows of a stream are scored before their labels are written.

Every replay of the benchmarks (the memories, the bias memories, FTRL) cuts a stream the same
way: a window's rows are scored against one state, then the window's labels are written.
"""

from __future__ import annotations

import numpy as np


def feedback_windows(slot_sizes, feedback_every: int | None = None, times=None,
                     feedback_seconds: float | None = None) -> np.ndarray:
    """int64 ``[N]``: the feedback window of every row of a stream cut into slots, numbered
    from 0 in stream order. A replay scores a window's rows against one state of the memory,
    then writes their labels; a window never spans two slots.

    ``feedback_every=B``: ``B`` consecutive rows of a slot; `None`: the whole slot (the paper's
    protocol). ``feedback_seconds=S`` (with ``times``, every row's timestamp in seconds, in
    stream order): the rows of one ``S``-second window of the log's clock, ``[kS, (k+1)S)``,
    as ``reloop2 feedback run --window-seconds S`` cuts a stream; ``feedback_every`` is then
    not used.
    """
    sizes = [int(size) for size in slot_sizes]
    if feedback_seconds is not None:
        if not feedback_seconds > 0:
            raise ValueError(f"`feedback_seconds` should be > 0. Received: {feedback_seconds}")
        times = None if times is None else np.asarray(times, np.float64)
        if times is None or times.shape != (sum(sizes),) or not np.isfinite(times).all():
            raise ValueError("`feedback_seconds` needs `times`: one finite timestamp per row "
                             f"({sum(sizes)}). Received: "
                             f"{None if times is None else times.shape}")
        if np.any(np.diff(times) < 0):
            raise ValueError("`times` should be in stream order (non-decreasing)")
    elif feedback_every is not None and feedback_every < 1:
        raise ValueError(f"`feedback_every` should be >= 1 or None. Received: {feedback_every}")
    windows, first, start = [], 0, 0
    for size in sizes:
        if feedback_seconds is not None:
            cell = np.floor(times[start:start + size] / feedback_seconds)
            window = np.concatenate([[0], np.cumsum(np.diff(cell) > 0)]) if size else cell
        else:
            window = np.arange(size) // (feedback_every or max(size, 1))
        windows.append(first + window.astype(np.int64))
        first += int(window[-1]) + 1 if size else 0
        start += size
    return np.concatenate(windows) if windows else np.zeros(0, np.int64)


def feedback_chunks(windows, rows: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of every feedback window in ``windows`` (``feedback_windows``), after
    checking that they give one window to each of the ``rows`` rows a replay streams."""
    windows = np.asarray(windows)
    if len(windows) != rows:
        raise ValueError(f"`windows` should hold one window per row ({rows}). "
                         f"Received: {len(windows)}")
    edges = np.concatenate([[0], np.flatnonzero(np.diff(windows)) + 1, [len(windows)]])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
