"""The parts of ``benchmarks/memory_benchmark.py`` (the script: flags, the run, the JSON).

* ``timing``: load average, RSS, and the interleaved (round-robin) timing of variants.
* ``structures``: the synthetic rows (``Stream``) and the structures: sketch, exact k-NN, FAISS.
* ``cells``: every structure at each (d, N) cell; the sketch alone across N.
* ``rss``: peak RSS, one child process per structure.
* ``dcn``: the overhead of compensation on a DCN forward pass.
* ``before_after``: the current memories vs older copies of their source.
* ``report``: targets, printed tables, the Markdown tables of docs/performance.md.

The script's folder is first on ``sys.path`` when it runs, so this package imports as
``memory_bench``.
"""
