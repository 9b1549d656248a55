"""Start-up checks of the optional GPU kernels, --mlp-kernel quack and --attention-kernel fa4:
what they cannot run is refused by name before anything is built (the kernels themselves are
tested on a GPU in tests/gpu/test_quack_mlp_gpu.py and tests/gpu/test_fa4_attention_gpu.py)."""
import pytest

from megatron.config.cli import parse_config
from megatron.config.validate import ConfigError, validate_config
from megatron.eval.checkpoint_loader import eval_model_config

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "64", "--micro-batch-size", "2", "--train-iters", "3", "--mock-data"]
QUACK = ["--mlp-kernel", "quack", "--bf16"]
FA4 = ["--attention-kernel", "fa4", "--bf16", "--attention-dropout", "0"]


def test_flag_reaches_the_config():
    assert parse_config(BASE).model.mlp_kernel == "torch"
    cfg = parse_config(BASE + QUACK)
    assert cfg.model.mlp_kernel == "quack"
    validate_config(cfg, 1)  # nothing refused at start-up
    validate_config(parse_config(BASE + QUACK + ["--openai-gelu"]), 1)
    validate_config(parse_config(BASE + ["--mlp-kernel", "quack", "--fp16"]), 1)
    # evaluation builds the model with torch's kernels: same weights, any device and dtype
    assert eval_model_config(cfg.model).mlp_kernel == "torch"


@pytest.mark.parametrize("extra, world, named", [
    (["--mlp-kernel", "quack"], 1, ["fp32", "--bf16"]),
    (QUACK + ["--glu-activation", "swiglu"], 1, ["--glu-activation swiglu"]),
    (QUACK + ["--tensor-model-parallel-size", "2"], 2, ["--tensor-model-parallel-size 1, not 2"]),
])
def test_what_quack_cannot_run_is_refused_by_name(extra, world, named):
    with pytest.raises(ConfigError) as e:
        validate_config(parse_config(BASE + extra), world)
    for text in ["--mlp-kernel quack", "--mlp-kernel torch", *named]:
        assert text in str(e.value), str(e.value)


def test_unknown_kernel_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        parse_config(BASE + ["--mlp-kernel", "triton"])
    assert "--mlp-kernel" in capsys.readouterr().err


def test_fa4_flag_reaches_the_config():
    cfg = parse_config(BASE + FA4)
    assert cfg.model.attention_kernel == "fa4"
    validate_config(cfg, 1)
    validate_config(parse_config(BASE + FA4 + ["--position-embedding-type", "rope",
                                               "--tensor-model-parallel-size", "2"]), 2)
    # evaluation builds torch's attention: same weights, any device and dtype
    assert eval_model_config(cfg.model).attention_kernel == "auto"
    assert eval_model_config(parse_config(BASE).model).attention_kernel == "auto"
    assert eval_model_config(parse_config(BASE + ["--attention-kernel", "eager"]).model
                             ).attention_kernel == "eager"


@pytest.mark.parametrize("extra, named", [
    (["--attention-kernel", "fa4", "--attention-dropout", "0"], ["fp32", "--bf16"]),
    (["--attention-kernel", "fa4", "--bf16"], ["--attention-dropout is 0.1"]),  # the default
    (FA4 + ["--position-embedding-type", "alibi"], ["ALiBi"]),
    (FA4 + ["--prefix-lm"], ["--prefix-lm"]),
    (FA4 + ["--reset-attention-mask"], ["--reset-attention-mask"]),
    (FA4 + ["--hidden-size", "20", "--num-attention-heads", "4"], ["gives 5"]),
    (FA4 + ["--hidden-dropout", "0", "--enable-cuda-graph"], ["--enable-cuda-graph"]),
])
def test_what_fa4_cannot_run_is_refused_by_name(extra, named):
    with pytest.raises(ConfigError) as e:
        validate_config(parse_config(BASE + extra), 1)
    for text in ["--attention-kernel fa4", *named]:
        assert text in str(e.value), str(e.value)


def test_why_a_kernel_library_cannot_run(monkeypatch):
    """The reason build_engine gives, for each way a machine can lack an optional library (a
    GPU is faked: the checks before the import are torch.cuda's answers)."""
    import torch

    from megatron.model.hopper_kernels import unavailable_reason
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "needs a CUDA GPU" in unavailable_reason("json", "x==1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (8, 0))
    assert "this GPU is 8.0" in unavailable_reason("json", "x==1")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda: (9, 0))
    assert unavailable_reason("no_such_package_here.cute", "no-such==1.0") == (
        "the no-such package is not installed (pip install no-such==1.0)")
    why = unavailable_reason("json.no_such_module", "json-kernels==2.0")
    assert why.startswith("json.no_such_module failed to load (ModuleNotFoundError")
    assert why.endswith("json-kernels==2.0 is the tested version")
    assert unavailable_reason("json.decoder", "json-kernels==2.0") is None
