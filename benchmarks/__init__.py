"""relearn's benchmarks: ``python -m benchmarks`` (``make bench``) measures speed and prints one table.

Speed is measured here, not in timed tests. Every comparison is made side by side in the same run (ratios),
since machines are noisy: generator scaling (10 % vs full size), training with 1 vs 2 torch threads, and
each pipeline step's share of the pipeline's wall time.
"""
