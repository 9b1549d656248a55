"""On a GPU (skipped without one): --enable-cuda-graph (megatron/model/cuda_graphs.py) gives the
same outputs, gradients and training as the layers run as usual.

- Model level: graphed forward and backward against the plain layers on two different batches
  (the second replays the graphs captured on the first), for each attention input the graphs
  take (learned, rotary, ALiBi with FlexAttention, prefix-LM, documents); inputs of another
  shape run without graphs.
- Training through the DeepSpeed engine, graphs against none from the same seed: our bf16
  optimizer with and without gradient accumulation and torch.compile, and fp32 at ZeRO 0,
  where gradients accumulate in `.grad` (a replay's gradient buffers are reused by the next
  micro-batch's forward replay: cuda_graphs.py copies them out first)."""
import pytest
import torch

from distributed import run_on_ranks

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MODEL = ["--num-layers", "3", "--hidden-size", "64", "--num-attention-heads", "4",
         "--seq-length", "64", "--hidden-dropout", "0", "--attention-dropout", "0"]
V = 128


def _batch(seed: int, mbs: int, T: int, prefix: bool = False, documents: bool = False):
    from megatron.data.batch import Batch
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (mbs, T), generator=g)
    doc = torch.cumsum((torch.rand(mbs, T, generator=g) < 0.05).long(), 1) if documents else None
    pre = torch.randint(1, T, (mbs,), generator=g) if prefix else None
    return Batch(tokens, torch.roll(tokens, -1, 1), torch.ones(mbs, T),
                 torch.arange(T).expand(mbs, T), document_ids=doc, prefix_lengths=pre)


def _model_grads(rank, world_size, extra, prefix, documents):
    import warnings

    from megatron.config.cli import parse_config
    from megatron.model.cuda_graphs import LayerGraphs
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import initialize_parallel

    cfg = parse_config([*MODEL, "--micro-batch-size", "2", "--train-iters", "1", "--mock-data",
                        *extra]).replace(model={"vocab_size": V})
    initialize_parallel(cfg.parallel)
    torch.manual_seed(0)
    model = GPTModel(cfg.model).cuda().train()

    def run(batch):
        b = batch.to("cuda")
        for p in model.parameters():
            p.grad = None
        logits = model(b.tokens, b.position_ids, b.prefix_lengths, b.document_ids)
        loss = model.loss(logits, b.labels, b.loss_mask)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    batches = [_batch(s, 2, 64, prefix, documents) for s in (1, 2)]
    plain = [run(b) for b in batches]
    model.layer_graphs = LayerGraphs(model.layers)
    graphed = [run(b) for b in batches]
    assert model.layer_graphs.captured
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        other = _batch(3, 1, 64, prefix, documents)  # another batch size: no replay
        fallback = run(other)
    model.layer_graphs = None
    reference = run(other)
    return plain, graphed, fallback, reference, [str(w.message) for w in caught]


@pytest.mark.parametrize("extra, prefix, documents", [
    ((), False, False),
    (("--position-embedding-type", "rope"), False, False),
    (("--position-embedding-type", "alibi"), False, False),  # FlexAttention, block mask inside
    (("--prefix-lm",), True, False),
    (("--reset-attention-mask",), False, True),
], ids=["learned", "rope", "alibi", "prefix-lm", "documents"])
def test_graphed_layers_match_the_layers(extra, prefix, documents):
    [(plain, graphed, fallback, reference, warned)] = run_on_ranks(
        _model_grads, 1, args=(extra, prefix, documents), timeout=600)
    assert plain[0][0] != plain[1][0]  # two different batches
    for (loss, grads), (loss_g, grads_g) in zip(plain, graphed):
        assert abs(loss - loss_g) < 1e-5, (loss, loss_g)
        for name in grads:
            torch.testing.assert_close(grads_g[name], grads[name], rtol=1e-4, atol=1e-6,
                                       msg=lambda m, n=name: f"{n}: {m}")
    assert abs(fallback[0] - reference[0]) < 1e-5
    assert any("captured for inputs" in w for w in warned), warned


def _train(rank, world_size, extra, micro_batches, steps=4):
    from megatron.config.cli import parse_config
    from megatron.parallel.layout import initialize_parallel
    from megatron.trainer.build_engine import build_engine

    mbs = 2
    gbs = mbs * micro_batches * world_size
    results = {}
    for graphs in (False, True):
        cfg = parse_config([*MODEL, "--micro-batch-size", str(mbs), "--global-batch-size",
                            str(gbs), "--train-iters", str(steps), "--lr", "1e-3",
                            "--mock-data", *extra,
                            *(["--enable-cuda-graph"] if graphs else [])])
        cfg = cfg.replace(model={"vocab_size": V})
        layout = initialize_parallel(cfg.parallel)
        torch.manual_seed(0)
        engine = build_engine(cfg, layout, gbs)
        losses = [engine.train_step([_batch(100 * rank + 10 * s + i, mbs, 64)
                                     for i in range(micro_batches)], gbs).loss
                  for s in range(steps)]
        with torch.no_grad():
            eval_sum, _ = engine.eval_loss(_batch(99 + rank, mbs, 64))
        captured = engine.model.layer_graphs is not None and engine.model.layer_graphs.captured
        results[graphs] = (losses, eval_sum, captured,
                           {n: p.detach().float().cpu() for n, p in engine.model.named_parameters()})
    return results


@pytest.mark.parametrize("extra, micro_batches, tol", [
    (("--bf16",), 1, 1e-3),  # our optimizer's one-pass kernel on the bf16 gradients
    (("--bf16", "--torch-compile", "--position-embedding-type", "rope"), 2, 1e-3),
    (("--zero-stage", "0"), 2, 1e-5),  # fp32: autograd accumulates in .grad
], ids=["bf16", "bf16-accumulation-compiled", "fp32-zero0-accumulation"])
def test_training_with_graphs_matches_training_without(extra, micro_batches, tol):
    [results] = run_on_ranks(_train, 1, args=(extra, micro_batches), timeout=900)
    _assert_same_training(results, tol)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_data_parallel_training_with_graphs_matches_training_without():
    """DP 2, our optimizer's gradient hooks all-reducing buckets during the backward."""
    for results in run_on_ranks(_train, 2, args=(("--bf16", "--bf16-optimizer", "local"), 2),
                                timeout=900):
        _assert_same_training(results, 1e-3)


def _assert_same_training(results, tol):
    (losses, eval_sum, captured, params) = results[False]
    (losses_g, eval_sum_g, captured_g, params_g) = results[True]
    assert captured_g and not captured
    assert losses[-1] < losses[0]  # it trained
    for a, b in zip(losses, losses_g):
        assert abs(a - b) < tol * 10, (losses, losses_g)
    assert abs(eval_sum - eval_sum_g) < tol * 10 * abs(eval_sum)
    for name in params:
        torch.testing.assert_close(params_g[name], params[name], rtol=10 * tol, atol=tol,
                                   msg=lambda m, n=name: f"{n}: {m}")
