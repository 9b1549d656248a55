"""TP = 2 evaluation equals TP = 1 (fp32, up to the order of TP all-reduce sums: rel 1e-6): shards merge to the TP = 1 model's weights (GLU stride 2
interleaved right) and split back exactly; the lm-eval adapter, rolling perplexity and greedy
generation driven from rank 0 give the single-process results."""
import types

import pytest
import torch

from distributed import run_on_ranks

T = 16
MODEL = dict(num_layers=2, hidden_size=32, num_attention_heads=4, seq_length=T, vocab_size=384,
             hidden_dropout=0.0, attention_dropout=0.0, init_method_std=0.3,
             position_embedding_type="rope", glu_activation="swiglu", normalization="RMSNorm",
             add_bias_linear=False, untie_embeddings_and_output_weights=True)
REQS = [("Hello", " world"), ("", "abc"), ("a long context that overflows the window", " tail!"),
        ("ctx", " a continuation longer than sixteen tokens")]
TEXTS = ["tiny text", "a text of fifty-odd bytes, longer than three windows of 16"]


def _evaluate(runner):
    from megatron.data.tokenizers import ByteLevelTokenizer
    from megatron.eval.generation import generate
    from megatron.eval.harness import MegatronGPTLM
    from megatron.eval.text_perplexity import text_perplexity
    tok = ByteLevelTokenizer()
    lm = MegatronGPTLM(runner, tok, batch_size=3)
    req = lambda *a: types.SimpleNamespace(args=a)  # noqa: E731
    return {"ll": lm.loglikelihood([req(*r) for r in REQS]),
            "rolling": lm.loglikelihood_rolling([req(t) for t in TEXTS]),
            "ppl": text_perplexity(runner, tok, TEXTS, stride=5).nll,
            "gen": generate(runner, tok.tokenize("abc"), 20)[0],
            "until": lm.generate_until([req("abc", {"until": ["\n"], "max_gen_toks": 5})])}


def _tp2(rank, world_size):
    import torch.distributed as dist
    from megatron.config.schema import Config, ModelConfig, ParallelConfig
    from megatron.eval import checkpoint_loader as ckl
    from megatron.eval.runner import ModelRunner, drive
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import initialize_parallel
    layout = initialize_parallel(ParallelConfig(tensor_model_parallel_size=2))
    cfg = Config(model=ModelConfig(**MODEL))
    torch.manual_seed(11)
    model = GPTModel(cfg.model).eval()
    mine = model.state_dict()
    shards = [None, None]
    dist.all_gather_object(shards, mine)
    specs = ckl.partition_specs(cfg.model)
    full = ckl.merge_shards(shards, specs)
    back = ckl.split_state_dict(full, specs, 2)[rank]
    exact = all(torch.equal(back[k], v) for k, v in mine.items() if torch.is_tensor(v))
    results = drive(ModelRunner(model, cfg, layout), lambda: _evaluate(ModelRunner(model, cfg, layout)))
    full = {k: v.numpy() for k, v in full.items() if torch.is_tensor(v)}  # plain pickles, no shm
    return {"full": full, "exact": exact, "results": results}


def test_tp2_merges_splits_and_evaluates_as_tp1():
    import torch.distributed as dist
    from megatron.config.schema import Config, ModelConfig, ParallelConfig
    from megatron.eval.runner import ModelRunner
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import destroy_parallel, initialize_parallel
    outs = run_on_ranks(_tp2, 2, timeout=300)
    assert outs[0]["exact"] and outs[1]["exact"]
    started = not dist.is_initialized()
    layout = initialize_parallel(ParallelConfig())
    try:
        cfg = Config(model=ModelConfig(**MODEL))
        torch.manual_seed(11)
        model = GPTModel(cfg.model).eval()
        ref = model.state_dict()
        full = outs[0]["full"]
        assert set(full) == {k for k, v in ref.items() if torch.is_tensor(v)}
        for k, v in full.items():
            assert torch.equal(torch.from_numpy(v), ref[k]), k
        single = _evaluate(ModelRunner(model, cfg, layout))
    finally:
        if started:
            destroy_parallel()
    tp2 = outs[0]["results"]
    assert outs[1]["results"] is None
    for (a, ga), (b, gb) in zip(tp2["ll"], single["ll"]):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-5) and ga == gb
    assert tp2["rolling"] == pytest.approx(single["rolling"], rel=1e-6, abs=1e-5)
    assert tp2["ppl"] == pytest.approx(single["ppl"], rel=1e-6, abs=1e-5)
    assert tp2["gen"] == single["gen"] and tp2["until"] == single["until"]
