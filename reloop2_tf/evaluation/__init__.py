"""The benchmark and drift testbed: the code that measures the library, not the library itself.

* ``benchmark``: the streaming benchmark on real logs (static vs incremental vs ReLoop2);
  ``seeds``: the same over several seeds, summarized.
* ``drift_bench``, ``scenarios``, ``recovery``: the drift testbed (seeded shifts, recovery metrics).
* ``synthetic``, ``synthetic_bench``: a synthetic stream with a known shift, and its comparison.
* ``streaming``: the replay loop (score a feedback window, then reveal its labels); ``windows``:
  how a stream is cut into feedback windows (rows, slots or seconds); ``baselines``: bias
  memories and FTRL.
* ``metrics``: AUC, gAUC, logloss; ``plotting``: the plots of results.json files.

The library (``reloop2_tf``'s top, ``layers``, ``models``, ``data``) imports nothing from here but
``metrics`` (``training`` uses it; ``reloop2_tf.metrics`` is this module). The command line
(``reloop2_tf.cli``) runs the rest.
"""
