"""Pipeline stages for evaluation (megatron/eval/pipeline_stage.py): the uniform layer split,
GPTModel names renumbered per stage, one stage = GPTModel exactly, and start-up errors naming
the flags."""
import pytest
import torch

from megatron.config.schema import ModelConfig
from megatron.eval.pipeline_stage import StagePlan, stage_layers

MODEL = dict(num_layers=3, hidden_size=32, num_attention_heads=4, seq_length=16, vocab_size=384,
             hidden_dropout=0.0, attention_dropout=0.0, init_method_std=0.3)


@pytest.mark.parametrize("n,pp", [(3, 2), (4, 2), (5, 3), (4, 4), (7, 1)])
def test_layers_split_contiguously_and_as_evenly_as_possible(n, pp):
    parts = [stage_layers(n, pp, s) for s in range(pp)]
    assert [i for r in parts for i in r] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1 and min(map(len, parts)) >= 1


def test_stage_names():
    first, last = StagePlan(3, 2, 0, tied=True), StagePlan(3, 2, 1, tied=True)
    assert first.stage_name("embedding.word_embeddings.weight") == "embedding.word_embeddings.weight"
    assert first.stage_name("layers.1.mlp.fc1.weight") == "layers.1.mlp.fc1.weight"
    assert first.stage_name("layers.2.mlp.fc1.weight") is None
    assert first.stage_name("head.final_norm.weight") is None
    assert last.stage_name("layers.2.mlp.fc1.weight") == "layers.0.mlp.fc1.weight"
    assert last.stage_name("head.final_norm.weight") == "head.final_norm.weight"
    assert last.stage_name("embedding.word_embeddings.weight") == "word_embedding_weight"
    assert last.stage_name("embedding.position_embeddings.weight") is None
    untied = StagePlan(3, 2, 1, tied=False)
    assert untied.stage_name("embedding.word_embeddings.weight") is None
    assert StagePlan(3, 1, 0, tied=True).stage_name("embedding.word_embeddings.weight") == \
        "embedding.word_embeddings.weight"


@pytest.mark.parametrize("tied", [True, False])
def test_one_stage_is_the_gpt_model(tp1_layout, tied):
    from megatron.eval.pipeline_stage import PipelineStage
    from megatron.model.gpt import GPTModel
    cfg = ModelConfig(**MODEL, untie_embeddings_and_output_weights=not tied,
                      position_embedding_type="learned_absolute")
    torch.manual_seed(3)
    model = GPTModel(cfg).eval()
    state = torch.get_rng_state()
    stage = PipelineStage(cfg, StagePlan(3, 1, 0, tied)).eval()
    assert torch.equal(torch.get_rng_state(), state)  # built without drawing from our generator
    stage.load_state_dict(model.state_dict(), strict=True)
    tokens = torch.randint(0, 384, (2, 16))
    pos = torch.arange(16).expand(2, 16)
    with torch.no_grad():
        assert torch.equal(stage(tokens, pos), model(tokens, pos))


def test_errors_name_the_flags(monkeypatch):
    from megatron.eval.pipeline_stage import check_stage_layout
    from megatron.eval.runner import init_eval_parallel
    from megatron.parallel.layout import ParallelLayout
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ValueError, match=r"--tensor-model-parallel-size 2 x "
                                         r"--pipeline-model-parallel-size 3 = 6 ranks, but 4"):
        init_eval_parallel(2, 3)
    with pytest.raises(ValueError, match="--pipeline-model-parallel-size 3 does not divide the 4"):
        init_eval_parallel(None, 3)
    cfg = ModelConfig(**MODEL)
    lay = lambda tp, pp: ParallelLayout(tp, pp, 1, 0, tp * pp, torch.device("cpu"))  # noqa: E731
    with pytest.raises(ValueError, match="--pipeline-model-parallel-size 4 exceeds the 3 layers"):
        check_stage_layout(cfg, lay(1, 4), "ck")
    with pytest.raises(ValueError, match="--tensor-model-parallel-size 5 does not divide the "
                                         "padded vocabulary 384"):
        check_stage_layout(cfg, lay(5, 1), "ck")
    check_stage_layout(cfg, lay(2, 3), "ck")


def test_bad_checkpoints_and_tokenizers_are_named(tp1_layout, tmp_path):
    """Issue 8's bad input: a missing checkpoint, weights of another model shape than its
    config.json, a tokenizer larger than the checkpoint's vocabulary."""
    import json

    from megatron.config.schema import Config, DataConfig
    from megatron.eval import checkpoint_loader as ckl
    from megatron.eval.pipeline_stage import load_stage
    from megatron.eval.tokenizer import tokenizer_for
    from megatron.model.gpt import GPTModel
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        load_stage(str(tmp_path / "nope"), tp1_layout)
    cfg = Config(model=ModelConfig(**MODEL), data=DataConfig(tokenizer_type="ByteLevelTokenizer"))
    ck = str(tmp_path / "ck")
    ckl.save_model_checkpoint(ck, cfg, [GPTModel(cfg.model).state_dict()])
    load_stage(ck, tp1_layout)  # as saved: loads
    config_json = tmp_path / "ck" / "release" / "config.json"
    saved = json.loads(config_json.read_text())
    config_json.write_text(json.dumps(dict(saved, model=dict(saved["model"], num_layers=4))))
    with pytest.raises(ValueError, match=r"--load .*the weights do not match the model of its "
                                         r"config.json \(missing \['layers.3"):
        load_stage(ck, tp1_layout)
    config_json.write_text(json.dumps(dict(saved, model=dict(saved["model"], hidden_size=64))))
    with pytest.raises(ValueError, match="do not fit the model of its config.json"):
        load_stage(ck, tp1_layout)
    small = cfg.replace(model={"vocab_size": 128})
    with pytest.raises(ValueError, match="has 258 tokens, more than the checkpoint's padded "
                                         "vocabulary 128: wrong tokenizer"):
        tokenizer_for(small)
