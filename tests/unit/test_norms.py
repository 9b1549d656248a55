"""megatron/parallel/norms.py: the global norm over a list of bf16 and fp32 tensors (computed
per dtype, so that each dtype gets torch's multi-tensor kernel) equals the norm of all of them
in fp64; an empty list gives 0."""
import torch

from megatron.parallel.norms import global_norm


def test_global_norm_of_mixed_dtypes_equals_fp64_norm():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s, generator=g).to(dt) for s, dt in
               [((7, 3), torch.bfloat16), ((5,), torch.float32), ((2, 2, 2), torch.bfloat16),
                ((11,), torch.float32), ((1,), torch.bfloat16)]]
    expected = torch.sqrt(sum(t.double().square().sum() for t in tensors))
    norm = global_norm(tensors, None, torch.device("cpu"))
    assert norm.dtype == torch.float32 and norm.shape == ()
    torch.testing.assert_close(norm.double(), expected, rtol=1e-6, atol=0)
    for dtype in (torch.bfloat16, torch.float32):  # each dtype's part counts
        part = [t for t in tensors if t.dtype == dtype]
        torch.testing.assert_close(
            global_norm(part, None, torch.device("cpu")).double(),
            torch.sqrt(sum(t.double().square().sum() for t in part)), rtol=1e-6, atol=0)


def test_global_norm_of_nothing_is_zero():
    assert global_norm([], None, torch.device("cpu")).item() == 0.0
