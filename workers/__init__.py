"""Code that runs inside Ray tasks and actors, training ranks and DataLoader workers.

Nothing here imports Ray: each piece is plain Python, so the same code serves the Ray
pipeline, a plain loop (the benchmark baseline) and tests without a cluster.
"""
