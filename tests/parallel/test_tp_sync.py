"""--sync-tp-duplicated-parameters on 2 TP ranks: exactly the replicated parameters are averaged
across the TP group before each forward; tensor-parallel shards are left alone."""
import torch

from distributed import run_on_ranks


def _run(rank, world_size):
    from types import SimpleNamespace

    from megatron.config.schema import ModelConfig, ParallelConfig
    from megatron.core import parallel_state as ps
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import initialize_parallel
    from megatron.parallel.tp_sync import (sync_tp_duplicated_before_forward,
                                           tp_duplicated_parameters)

    initialize_parallel(ParallelConfig(tensor_model_parallel_size=world_size))
    group = ps.get_tensor_model_parallel_group()
    torch.manual_seed(0)
    model = GPTModel(ModelConfig(num_layers=2, hidden_size=32, num_attention_heads=4,
                                 seq_length=8, vocab_size=64, embed_layernorm=True,
                                 hidden_dropout=0.0, attention_dropout=0.0))
    names = {id(p): n for n, p in model.named_parameters()}
    duplicated = [names[id(p)] for p in tp_duplicated_parameters(model)]

    def other_rank(t):  # the other TP rank's copy of t (TP2)
        parts = [torch.empty_like(t) for _ in range(world_size)]
        torch.distributed.all_gather(parts, t.detach().contiguous(), group=group)
        return parts[1 - rank]

    params = dict(model.named_parameters())
    if world_size == 1:
        return {n: p.numel() for n, p in params.items()}
    before = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():  # drift: rank 1's copies move by +0.5
        for n in duplicated:
            params[n].add_(0.5 * rank)
    tokens = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    model(tokens)
    drift_kept = all(not torch.equal(params[n], other_rank(params[n])) for n in duplicated)
    sync_tp_duplicated_before_forward(model, SimpleNamespace(tp=world_size, tp_group=group))
    model(tokens)
    synced = {n: torch.equal(params[n], other_rank(params[n])) and
              torch.allclose(params[n], before[n] + 0.25) for n in duplicated}
    shards_untouched = all(torch.equal(params[n], before[n]) for n in params
                           if n not in duplicated)
    return duplicated, {n: p.numel() for n, p in params.items()}, drift_kept, synced, \
        shards_untouched


def test_replicated_copies_are_averaged_before_forward_and_shards_untouched():
    full, = run_on_ranks(_run, 1, (), 120)
    (dup, tp2, drift_kept, synced, untouched), _ = run_on_ranks(_run, 2, (), 120)
    # the replicated ones: norms (embedding LN too), row-parallel biases, position embeddings
    assert {"embedding.position_embeddings.weight", "head.final_norm.weight",
            "embedding.norm.bias", "layers.1.attention.dense.bias", "layers.1.mlp.fc2.bias"} <= set(dup), dup
    # duplicated = exactly the parameters TP2 holds whole (a shard is never averaged)
    assert sorted(n for n in full if tp2[n] == full[n]) == sorted(dup)
    assert drift_kept  # without the hook the forward leaves the copies apart
    assert all(synced.values()), synced
    assert untouched
