"""megatron/trainer/grad_reducer.py on 2 ranks (gloo on CPU here; NCCL on 2 GPUs in
tests/gpu/test_grad_reducer_gpu.py), communicating in fp32 and in bf16: after a step's backwards
every main_grad holds the sum of all ranks' bf16 gradients over all micro-batches (exact in
fp32; in bf16 within the rounding of each rank's fp32 sum and of the total) and no .grad is
left; in the step's last backward every bucket is all-reduced while the backward runs (none in
an earlier micro-batch's); a parameter one rank does not use counts as zero there, also when
only an earlier micro-batch used it; each step overwrites the last one's."""
import pytest
import torch

from distributed import run_on_ranks

IN, HIDDEN, OUT, BATCH = 6, 10, 4, 3
# (micro-batches, which of them rank 1 leaves layer 3 out of)
STEPS = [(1, ()), (2, ()), (1, (0,)), (2, (1,)), (3, (0, 2))]


def _model(device):
    torch.manual_seed(0)
    layers = torch.nn.ModuleList([torch.nn.Linear(IN, HIDDEN), torch.nn.Linear(HIDDEN, HIDDEN),
                                  torch.nn.Linear(HIDDEN, OUT), torch.nn.Linear(HIDDEN, OUT)])
    return layers.to(device=device, dtype=torch.bfloat16)


def _loss(layers, x, use_last: bool):
    h = layers[1](torch.tanh(layers[0](x)))
    out = layers[2](h) + (layers[3](h) if use_last else 0)
    return out.float().pow(2).mean()


def _input(step, micro, rank, device):
    g = torch.Generator().manual_seed(100 * step + 10 * micro + rank)
    return torch.randn(BATCH, IN, generator=g).to(device=device, dtype=torch.bfloat16)


def _uses_last(skip, micro, rank):
    return not (rank == 1 and micro in skip)


def reduce_and_compare(rank, world_size, backend, dtype_name):
    """Per step: (buckets, launched during the last backward, launched during earlier ones,
    max |main_grad - reference|, .grad left)."""
    import torch.distributed as dist

    from megatron.trainer.grad_reducer import OverlappedGradReducer
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    model, ref = _model(device), _model(device)
    params = list(model.parameters())
    dtype = getattr(torch, dtype_name)
    reducer = OverlappedGradReducer(params, dist.group.WORLD, dtype, bucket_numel=80)
    out = []
    for step, (micro_batches, skip) in enumerate(STEPS):
        early = 0
        for micro in range(micro_batches):
            last = micro == micro_batches - 1
            reducer.before_backward(last)
            _loss(model, _input(step, micro, rank, device), _uses_last(skip, micro, rank)).backward()
            if not last:
                early = reducer.launched_in_backward
        during = reducer.launched_in_backward
        reducer.finish()
        grads_left = sum(p.grad is not None for p in params)
        # the reference: every rank's micro-batches through a copy, bf16 grads summed in fp32
        want = [torch.zeros_like(p, dtype=torch.float32) for p in ref.parameters()]
        for r in range(world_size):
            per_rank = [torch.zeros_like(w) for w in want]
            for micro in range(micro_batches):
                ref.zero_grad()
                _loss(ref, _input(step, micro, r, device), _uses_last(skip, micro, r)).backward()
                for w, q in zip(per_rank, ref.parameters()):
                    if q.grad is not None:
                        w += q.grad.float()
            for w, one in zip(want, per_rank):  # as communicated
                w += one.to(dtype).float()
        # relative to the largest gradient of each parameter; in bf16 the sum is also rounded
        diff = max(((p.main_grad.float() - w).abs().max() / w.abs().max()).item()
                   for p, w in zip(params, want))
        out.append((len(reducer.buckets), during, early, diff, grads_left))
        reducer.reset()
    return out


def check(results, dtype_name):
    for rank, per_step in enumerate(results):
        for (buckets, during, early, diff, grads_left), (micro_batches, skip) in \
                zip(per_step, STEPS):
            assert buckets > 1  # (bucket_numel 80: several)
            assert early == 0
            if rank == 0 or micro_batches - 1 not in skip:
                assert during == buckets
            else:  # layer 3's bucket comes first: all wait for the end
                assert during == 0
            assert diff <= (1e-6 if dtype_name == "float32" else 2 ** -8)
            assert grads_left == 0


@pytest.mark.slow
@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_buckets_hold_the_sum_of_all_ranks_gradients(dtype_name):
    check(run_on_ranks(reduce_and_compare, 2, args=("gloo", dtype_name), timeout=120),
          dtype_name)
