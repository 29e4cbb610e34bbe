"""Parts of the serving-cost benchmark (``benchmarks/serving_cost.py``, ``make bench``).

``stats`` (percentiles, ratios, interleaved timing) and ``macs`` (multiply-add counts) are
pure and unit-tested; ``forward``, ``grpc`` and ``sketch`` measure; ``report`` prints tables.
"""
