"""The pipeline module is GPTModel cut into stages: same seed -> same weights (mapped names),
same loss and gradients, for PP = 2 and 4 (with TP = 2), tied and untied, every partition method.

One run_on_ranks spawn per world size; all cases run inside the ranks.
"""
import pytest
import torch

from distributed import run_on_ranks

pytestmark = pytest.mark.slow  # about 40 s

B, T, V = 2, 16, 128
FLAGS = ["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4",
         "--seq-length", str(T), "--hidden-dropout", "0", "--attention-dropout", "0",
         "--train-iters", "1", "--micro-batch-size", str(B)]
# name -> (tp, pp, extra flags)
CASES = {
    "pp2_uniform": (1, 2, ["--pp-partition-method", "uniform"]),
    "pp2_parameters": (1, 2, ["--pp-partition-method", "parameters"]),
    "pp2_type_transformer_untied": (1, 2, ["--untie-embeddings-and-output-weights"]),
    "pp2_documents_rope": (1, 2, ["--position-embedding-type", "rope"]),
    "pp4": (1, 4, []),
    "tp2_pp2": (2, 2, []),
}
SIZES = {2: [n for n, c in CASES.items() if c[0] * c[1] == 2],
         4: [n for n, c in CASES.items() if c[0] * c[1] == 4]}


def _inputs():
    g = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, V, (B, T), generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)
    loss_mask = (torch.rand(B, T, generator=g) > 0.2).float()
    pos = torch.arange(T).expand(B, T).contiguous()
    docs = torch.tensor([[0] * 5 + [1] * 11, [0] * 8 + [1] * 8])
    return tokens, labels, loss_mask, pos, docs


def _run(rank, world_size, names):
    import torch.distributed as dist
    from megatron.config.cli import parse_config
    from megatron.core import parallel_state as ps
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import initialize_parallel
    from megatron.trainer.pipeline import build_pipeline_module, gpt_name

    out = {}
    for name in names:
        tp, pp, extra = CASES[name]
        cfg = parse_config(FLAGS + extra + ["--tensor-model-parallel-size", str(tp),
                                            "--pipeline-model-parallel-size", str(pp)])
        cfg = cfg.replace(model={"vocab_size": V})
        layout = initialize_parallel(cfg.parallel)
        torch.manual_seed(1234)
        ref = GPTModel(cfg.model)
        after_ref = torch.get_rng_state()
        torch.manual_seed(1234)
        module = build_pipeline_module(cfg, layout)
        assert torch.equal(torch.get_rng_state(), after_ref)  # same draws as GPTModel
        ref_params = dict(ref.named_parameters())
        same_init = all(torch.equal(p, ref_params[gpt_name(n, cfg.model.num_layers)])
                        for n, p in module.named_parameters())
        tokens, labels, loss_mask, pos, docs = _inputs()
        use_docs = "documents" in name
        # Run the stages by hand, passing activations with send/recv over the pipeline group.
        first, last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
        group = ps.get_pipeline_model_parallel_group()
        x = (tokens, pos, docs) if use_docs else (tokens, pos)
        if not first:
            h = torch.empty(B, T, 32)
            dist.recv(h, src=ps.get_pipeline_model_parallel_prev_rank(), group=group)
            h.requires_grad_(True)
            x = (h, *x[1:])
        y = module(x)
        if last:
            loss = GPTModel.loss(y, labels, loss_mask)
            loss.backward()
        else:
            dist.send(y[0].detach(), dst=ps.get_pipeline_model_parallel_next_rank(), group=group)
            g = torch.empty_like(y[0])
            dist.recv(g, src=ps.get_pipeline_model_parallel_next_rank(), group=group)
            y[0].backward(g)
        if not first:
            dist.send(h.grad, dst=ps.get_pipeline_model_parallel_prev_rank(), group=group)
        module.allreduce_tied_weight_gradients()
        ref_loss = GPTModel.loss(ref(tokens, position_ids=pos,
                                     document_ids=docs if use_docs else None), labels, loss_mask)
        ref_loss.backward()
        grad_diff = max((p.grad - ref_params[gpt_name(n, cfg.model.num_layers)].grad).abs().max()
                        .item() for n, p in module.named_parameters() if p.grad is not None)
        out[name] = dict(same_init=same_init, grad_diff=grad_diff, ref_loss=ref_loss.item(),
                         loss=loss.item() if last else None, stages=module.parts)
    return out


@pytest.fixture(scope="module")
def results():
    return {size: run_on_ranks(_run, size, args=(names,), timeout=600)
            for size, names in SIZES.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_pipeline_module_matches_gpt_model(results, name):
    tp, pp, _ = CASES[name]
    ranks = results[tp * pp]
    for r in ranks:
        assert r[name]["same_init"], name
        assert r[name]["grad_diff"] <= 1e-5, (name, r[name]["grad_diff"])
    last = ranks[-1][name]
    assert last["loss"] == pytest.approx(last["ref_loss"], rel=1e-6)
    parts = last["stages"]
    assert len(parts) == pp + 1 and all(a < b for a, b in zip(parts, parts[1:]))
