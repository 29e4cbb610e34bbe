"""A NumPy replica of the default memory's id tables and self-tuning combiner, for design studies.

``python benchmarks/trust_study.py`` (see that script) trains the benchmark's base model once per
log, saves its test and warm-start rows, and replays combiner variants in seconds each. It leaves
out the SRP tables (``reloop2 no-srp`` in docs/benchmarks.md: +0.56 gAUC against +0.55 with them).
"""
