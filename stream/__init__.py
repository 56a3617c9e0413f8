"""The runtime around the engine: Kafka, Redis, the worker, the CLI, the Faust app."""

import os

# numpy's OpenBLAS runs a large product on every core, then keeps its helper
# threads spinning between calls. The worker's products are small and come once
# per batch (the models' taste projection), so with vectors and models on the
# helpers spun on the second core all the time: the same wall time, twice the CPU
# per event at 5,000-event batches (bench/batch_cost.py, BENCHMARKS.md), a core the
# broker and Redis beside the worker could use. Set before numpy loads (this
# package is imported first by `profiler` and the Faust app); an operator's value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
