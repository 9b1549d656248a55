"""On 2 GPUs over NCCL (skipped with fewer): the overlapped gradient all-reduce of
tests/parallel/test_grad_reducer.py, where the all-reduces run on NCCL's own stream."""
import pytest
import torch

from distributed import run_on_ranks
from parallel.test_grad_reducer import check, reduce_and_compare

pytestmark = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_buckets_hold_the_sum_of_all_ranks_gradients_over_nccl(dtype_name):
    check(run_on_ranks(reduce_and_compare, 2, args=("nccl", dtype_name), timeout=300),
          dtype_name)
