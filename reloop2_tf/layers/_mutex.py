"""A change of state that concurrent calls of a graph take turns on, by a mutex named in the graph.

``tf.CriticalSection`` does this, but makes its mutex when it is constructed: an eager resource
that a SavedModel cannot carry. Here the mutex is a ``MutexV2`` op inside the traced function,
found by its ``shared_name`` in the resource manager of whatever runs the graph (eager, a TF1
Session, TF Serving), so every signature and every call of one exported memory share one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

from reloop2_tf._keras import tf


def mutex_name(prefix: str) -> str:
    """A name no other mutex of the process has: ``prefix`` and a random suffix."""
    return f"{prefix}_{uuid.uuid4().hex}"


def locked(name: str, change: Callable, after: Iterable = (), held_for: Callable = lambda: ()):
    """Runs ``change()`` holding the mutex ``name``; returns what it returns.

    The lock is taken once every tensor of ``after`` is computed and released once every tensor
    ``change()`` returns and every tensor of ``held_for()`` (called after ``change()``, in the
    lock's scope: reads ordered after the change's writes) is computed. What is returned is
    ready only after the release, so that nothing that uses it runs for a change that failed.
    ``MutexLock`` is an asynchronous kernel: a call that waits holds no thread.
    """
    with tf.control_dependencies(list(after)):
        lock = tf.raw_ops.MutexLock(mutex=tf.raw_ops.MutexV2(shared_name=name))
    with tf.control_dependencies([lock]):
        result = change()
        done = [t for t in tf.nest.flatten(result) if t is not None] + list(held_for())
    with tf.control_dependencies(done):
        tf.raw_ops.ConsumeMutexLock(mutex_lock=lock)
        return None if result is None else tf.nest.map_structure(tf.identity, result)


def when(guard: Callable | None, write: Callable, after: Iterable = ()) -> tf.Tensor:
    """``write()`` (which returns the weight written, a float32 scalar) if ``guard`` is `None`
    or ``guard()`` returns true; else 0 and nothing written. ``guard()`` runs once every tensor
    of ``after`` (the write's checked inputs) is computed, so a rejected write never calls it.

    Called inside a memory's lock, the guard and the write are one step for every other write:
    the export's exactly-once check of write ids (``export._ServingModule.exactly_once``)
    claims an id there, so that two calls with the same id cannot both write.
    """
    if guard is None:
        return write()
    with tf.control_dependencies(list(after)):
        go = guard()
    return tf.cond(go, write, lambda: tf.constant(0.0))
