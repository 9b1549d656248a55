"""Our FlexAttention BlockMask (built from block bounds) against torch's create_block_mask, which
evaluates the mask at every position: the same full, partial and empty blocks."""
import pytest
import torch
from torch.nn.attention.flex_attention import create_block_mask

from megatron.model import masks


def _blocks(bm) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) dense (B, H, n, n) bool block matrices of a BlockMask."""
    out = []
    for counts, indices in ((bm.kv_num_blocks, bm.kv_indices),
                            (bm.full_kv_num_blocks, bm.full_kv_indices)):
        dense = torch.zeros(indices.shape, dtype=torch.bool)
        keep = torch.arange(indices.shape[-1]) < counts[..., None]
        dense.scatter_(-1, indices.long(), keep)
        out.append(dense)
    return tuple(out)


def _documents(B, T, mean_len, g):
    return (torch.rand(B, T, generator=g) < 1 / mean_len).long().cumsum(1)


@pytest.mark.parametrize("T", [16, 256, 300, 640])
@pytest.mark.parametrize("kind", ["causal", "prefix", "documents", "prefix+documents"])
def test_block_mask_equals_torch_create_block_mask(T, kind):
    g = torch.Generator().manual_seed(T)
    B = 3
    prefix = torch.tensor([0, T // 3, T - 1]) if "prefix" in kind else None
    if prefix is not None:
        prefix[1] = torch.randint(1, T, (1,), generator=g)
    docs = _documents(B, T, 90, g) if "documents" in kind else None
    ours = masks.block_mask(T, "cpu", prefix, docs)
    ref = create_block_mask(masks.mask_mod(prefix, docs), B if kind != "causal" else None, None,
                            T, T, device="cpu")
    assert ours.shape == ref.shape
    for a, b in zip(_blocks(ours), _blocks(ref)):
        assert torch.equal(a, b)
    q_ours, q_ref = ours.q_num_blocks, ref.q_num_blocks  # the backward's transposed view
    assert torch.equal(q_ours, q_ref) and torch.equal(ours.full_q_num_blocks, ref.full_q_num_blocks)
