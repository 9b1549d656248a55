"""--enable-cuda-graph's start-up checks: what the captured layers cannot do is refused by name
before anything is built (the graphs themselves are tested on a GPU in
tests/gpu/test_cuda_graph_gpu.py)."""
import json
import types

import pytest
import torch

from megatron.config.cli import parse_config
from megatron.config.validate import ConfigError, validate_config

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "64", "--micro-batch-size", "2", "--train-iters", "3", "--mock-data",
        "--enable-cuda-graph"]
NO_DROPOUT = ["--hidden-dropout", "0", "--attention-dropout", "0"]
OK = NO_DROPOUT + ["--bf16"]  # our bf16 optimizer (auto at DP 1)


def test_flag_reaches_the_config():
    assert parse_config(BASE).training.enable_cuda_graph
    assert not parse_config(BASE[:-1]).training.enable_cuda_graph
    validate_config(parse_config(BASE + OK), 1)  # nothing refused
    validate_config(parse_config(BASE + NO_DROPOUT + ["--zero-stage", "0"]), 1)  # fp32
    validate_config(parse_config(BASE + OK + ["--bf16-optimizer", "local"]), 2)  # DP 2


@pytest.mark.parametrize("extra, world, named", [
    (["--bf16"], 1, ["--hidden-dropout 0.1", "--attention-dropout 0.1"]),  # Megatron's defaults
    (OK + ["--tensor-model-parallel-size", "2"], 2, ["--tensor-model-parallel-size 2"]),
    (OK + ["--pipeline-model-parallel-size", "2"], 2, ["--pipeline-model-parallel-size 2"]),
    (OK, 2, ["DeepSpeed's optimizer (bf16, ZeRO stage 1)"]),  # auto at DP 2: DeepSpeed's
    (NO_DROPOUT + ["--zero-stage", "0"], 2, ["fp32 at data-parallel size 2"]),
    (OK + ["--checkpoint-activations"], 1, ["--checkpoint-activations"]),
    (OK + ["--recompute-granularity", "selective"], 1, ["--recompute-granularity"]),
    (OK + ["--mlp-kernel", "quack"], 1, ["--mlp-kernel quack"]),
    (OK + ["--zero-stage", "3"], 1, ["DeepSpeed's optimizer (bf16, ZeRO stage 3)"]),
    (OK + ["--bf16-optimizer", "deepspeed"], 1, ["DeepSpeed's optimizer (bf16, ZeRO stage 1)"]),
    (NO_DROPOUT, 1, ["DeepSpeed's optimizer (fp32, ZeRO stage 1)", "--zero-stage 0"]),
    (NO_DROPOUT + ["--fp16", "--zero-stage", "0"], 1, ["DeepSpeed's optimizer (fp16"]),
])
def test_what_graphs_cannot_replay_is_refused_by_name(extra, world, named):
    with pytest.raises(ConfigError) as e:
        validate_config(parse_config(BASE + extra), world)
    for flag in ["--enable-cuda-graph", *named]:
        assert flag in str(e.value), str(e.value)


def test_zero_stage_3_in_the_deepspeed_json_is_refused(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"bf16": {"enabled": True}, "zero_optimization": {"stage": 3}}))
    with pytest.raises(ConfigError, match="ZeRO stage 3"):
        validate_config(parse_config(BASE + OK + ["--deepspeed_config", str(path)]), 1)
    # --zero-stage overrides the JSON's stage, as it does for DeepSpeed
    validate_config(parse_config(BASE + OK + ["--deepspeed_config", str(path),
                                             "--zero-stage", "1"]), 1)


@pytest.mark.parametrize("flags, message", [
    (OK, "--enable-cuda-graph needs CUDA GPUs; this run is on cpu"),
    (["--mlp-kernel", "quack", "--bf16"], "--mlp-kernel quack cannot run here: it needs a CUDA GPU"),
    (["--attention-kernel", "fa4", "--bf16", "--attention-dropout", "0"],
     "--attention-kernel fa4 cannot run here: it needs a CUDA GPU"),
])
def test_a_run_without_cuda_is_refused_when_the_model_is_built(flags, message, monkeypatch):
    """Checked where the model meets its device (build_engine); the kernel options also on a
    GPU machine, with CUDA hidden."""
    from megatron.trainer.build_engine import _apply_execution_options
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base = BASE if "--enable-cuda-graph" in message else BASE[:-1]
    cfg = parse_config(base + flags)
    layout = types.SimpleNamespace(device=torch.device("cpu"))
    with pytest.raises(ConfigError, match=message):
        _apply_execution_options(torch.nn.Module(), cfg, layout)
