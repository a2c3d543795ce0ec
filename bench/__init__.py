"""The benchmarks, run from the repository root as modules
(``python -m bench.warmup_benchmark``; ``make bench`` runs them all)."""
