"""megatron/data/prefix_lm.py on hand-made examples."""
import pytest
import torch

from megatron.data.prefix_lm import prefix_lengths, prefix_lm_masks


def test_fixed_split_hand_made_example():
    tokens = torch.arange(10).view(2, 5)
    lengths, loss_mask, attn = prefix_lm_masks(tokens, seed=0, prefix_length=torch.tensor([2, 4]))
    assert lengths.tolist() == [2, 4]
    # label t is token t+1: the last prefix position (p-1) predicts the first target
    assert loss_mask.tolist() == [[0, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    visible = (~attn[0, 0]).int().tolist()  # sample 0, prefix of 2: rows are queries
    assert visible == [[1, 1, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [1, 1, 1, 0, 0],
                       [1, 1, 1, 1, 0],
                       [1, 1, 1, 1, 1]]
    assert prefix_lm_masks(tokens, 0, 3, loss_on_targets_only=False)[1].sum() == 10


def test_random_split_is_seeded_and_in_range():
    a = prefix_lengths(1000, 8, seed=3)
    assert torch.equal(a, prefix_lengths(1000, 8, seed=3))
    assert not torch.equal(a, prefix_lengths(1000, 8, seed=4))
    assert a.min() == 1 and a.max() == 7  # at least one prefix and one target token
    with pytest.raises(ValueError, match="outside"):
        prefix_lengths(2, 8, 0, prefix_length=9)
