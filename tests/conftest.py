import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "tests")):
    if path not in sys.path:
        sys.path.insert(0, path)
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def tp1_layout():
    """Single-process parallel state (TP = PP = DP = 1) for in-process model tests of a module."""
    import torch.distributed as dist

    from megatron.config.schema import ParallelConfig
    from megatron.parallel.layout import destroy_parallel, initialize_parallel
    started = not dist.is_initialized()
    yield initialize_parallel(ParallelConfig())
    if started:
        destroy_parallel()
