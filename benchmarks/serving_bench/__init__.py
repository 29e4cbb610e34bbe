"""Parts of benchmarks/serving_benchmark.py: gRPC predict and write cost of the default memory.

* ``timing``: pure helpers (interleaved call timing, rows/s, overheads, target verdicts, the
  consistency check of the JSON report);
* ``servers``: the two exports (base alone, base + default memory) and the dev-server arms;
* ``reads``: in-process read time and footprint of the default memory after 10^4..10^6 rows;
* ``report``: the printed tables.
"""
