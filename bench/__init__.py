"""Benchmarks of the fleet (``python -m bench.<name>``); results in ``bench/results/``."""
