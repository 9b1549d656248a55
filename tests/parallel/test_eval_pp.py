"""Evaluation on TP x PP ranks driven from rank 0 equals one process (fp32, up to the order of
TP all-reduce sums: rel 1e-6): a checkpoint of a tiny 3-layer model (stages of 2 + 1 layers) is
loaded stage by stage and scored with the lm-eval adapter (loglikelihood, rolling), text
perplexity and greedy generation with and without the KV cache. TP 2 x PP 2 (4 ranks): untied
embeddings, a TP 1 checkpoint split over TP 2, through init_eval_parallel + from_checkpoint as
the tools do. TP 1 x PP 2 (2 ranks): tied embeddings (the last stage holds the word embedding's
copy), a TP 2 checkpoint merged, through lm-eval's model_args as `lm_eval --model megatron-gpt`
builds it."""
import pytest
import torch

from distributed import run_on_ranks
from test_eval_tp import MODEL, _evaluate

UNTIED = dict(MODEL, num_layers=3)
TIED = dict(MODEL, num_layers=3, untie_embeddings_and_output_weights=False,
            position_embedding_type="learned_absolute", glu_activation=None,
            normalization="LayerNorm", add_bias_linear=True)


def _evaluate_all(runner):
    from megatron.data.tokenizers import ByteLevelTokenizer
    from megatron.eval.generation import generate
    out = _evaluate(runner)
    out["gen_no_cache"] = generate(runner, ByteLevelTokenizer().tokenize("xyz"), 12,
                                   use_cache=False)[0]
    return out


def _held(runner) -> dict:
    m = runner.model
    return {"layers": len(m.layers), "embedding": m.embedding is not None,
            "head": m.head is not None, "tied_copy": hasattr(m, "word_embedding_weight")}


def _tools_path(rank, world_size, ck, tp, pp):
    from megatron.eval.runner import ModelRunner, drive, init_eval_parallel
    runner = ModelRunner.from_checkpoint(ck, init_eval_parallel(tp, pp))
    return {"held": _held(runner), "results": drive(runner, lambda: _evaluate_all(runner))}


def _model_args_path(rank, world_size, ck, pp):
    from megatron.eval.harness import MegatronGPTLM
    try:
        lm = MegatronGPTLM(load=ck, pipeline_model_parallel_size=pp)
    except SystemExit as e:  # followers serve inside the constructor, then exit
        return {"exit": e.code}
    try:
        return {"held": _held(lm.runner), "results": _evaluate_all(lm.runner)}
    finally:
        lm.runner.stop()  # (else at exit; the test harness closes the process group first)


@pytest.fixture(scope="module")
def checkpoints(tp1_layout, tmp_path_factory):
    """{name: (checkpoint dir, single-process results)} for the untied (saved at TP 1) and the
    tied (saved at TP 2) model."""
    from megatron.config.schema import Config, DataConfig, ModelConfig
    from megatron.eval import checkpoint_loader as ckl
    from megatron.eval.runner import ModelRunner
    from megatron.model.gpt import GPTModel
    out = {}
    for name, model_kw, save_tp in (("untied", UNTIED, 1), ("tied", TIED, 2)):
        cfg = Config(model=ModelConfig(**model_kw),
                     data=DataConfig(tokenizer_type="ByteLevelTokenizer"))
        torch.manual_seed(11)
        model = GPTModel(cfg.model).eval()
        shards = ckl.split_state_dict(model.state_dict(), ckl.partition_specs(cfg.model), save_tp)
        ck = str(tmp_path_factory.mktemp(name) / "ck")
        ckl.save_model_checkpoint(ck, cfg, shards)
        out[name] = (ck, _evaluate_all(ModelRunner(model, cfg, tp1_layout)))
    return out


def _assert_equal(got, want):
    for (a, ga), (b, gb) in zip(got["ll"], want["ll"], strict=True):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-5) and ga == gb
    assert got["rolling"] == pytest.approx(want["rolling"], rel=1e-6, abs=1e-5)
    assert got["ppl"] == pytest.approx(want["ppl"], rel=1e-6, abs=1e-5)
    for key in ("gen", "gen_no_cache", "until"):
        assert got[key] == want[key], key


@pytest.mark.slow
def test_tp2_pp2_equals_one_process(checkpoints):
    ck, single = checkpoints["untied"]
    outs = run_on_ranks(_tools_path, 4, args=(ck, 2, 2), timeout=300)
    assert [o["held"] for o in outs] == \
        [{"layers": 2, "embedding": True, "head": False, "tied_copy": False}] * 2 + \
        [{"layers": 1, "embedding": False, "head": True, "tied_copy": False}] * 2
    assert [o["results"] is None for o in outs] == [False, True, True, True]
    _assert_equal(outs[0]["results"], single)


def test_tp1_pp2_tied_through_model_args_equals_one_process(checkpoints):
    ck, single = checkpoints["tied"]
    driver, follower = run_on_ranks(_model_args_path, 2, args=(ck, 2), timeout=300)
    assert follower == {"exit": 0}
    assert driver["held"] == {"layers": 2, "embedding": True, "head": False, "tied_copy": False}
    _assert_equal(driver["results"], single)


def _fail_inside_a_call(rank, world_size, ck):
    """The driver's second forward fails inside stage 0 (a position beyond the learned table),
    while stage 1 waits for its hidden states; drive() must raise, not wait for that rank."""
    from megatron.eval.runner import ModelRunner, drive, init_eval_parallel
    runner = ModelRunner.from_checkpoint(ck, init_eval_parallel(1, 2))

    def work():
        tokens = torch.tensor([[1, 2, 3]])
        runner.logits(tokens)
        runner.logits(tokens, torch.tensor([[0, 1, 10_000]]))
    return drive(runner, work)


def test_a_driver_error_inside_a_pipeline_call_fails_fast(checkpoints):
    import time
    from distributed import RankFailed
    ck, _ = checkpoints["tied"]  # learned positions
    start = time.monotonic()
    with pytest.raises(RankFailed, match="rank 0 raised"):
        run_on_ranks(_fail_inside_a_call, 2, args=(ck,), timeout=120)
    assert time.monotonic() - start < 100
