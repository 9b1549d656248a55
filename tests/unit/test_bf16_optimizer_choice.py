"""--bf16-optimizer: which optimizer a layout gets, the DeepSpeed config it runs under, and a
checkpoint of the other kind refused by name."""
import pytest

from megatron.config.cli import parse_config
from megatron.config.validate import ConfigError, validate_config
from megatron.trainer.deepspeed_engine import check_optimizer_files
from megatron.trainer.ds_config import build_deepspeed_config, uses_local_bf16_optimizer

BASE = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
        "--seq-length", "16", "--micro-batch-size", "2", "--global-batch-size", "8",
        "--train-iters", "2", "--mock-data"]


def _cfg(*flags):
    return parse_config(BASE + list(flags))


@pytest.mark.parametrize("flags, world_size, local", [
    (["--bf16"], 1, True),  # nothing to shard: ours
    (["--bf16", "--deepspeed_config", "ds_configs/zero1_bf16.json"], 1, True),
    (["--bf16", "--deepspeed_config", "ds_configs/zero0_bf16.json"], 2, False),  # DP 2: sharded
    (["--bf16", "--pipeline-model-parallel-size", "2"], 2, False),  # the pipeline engine's
    (["--bf16", "--tensor-model-parallel-size", "2"], 2, True),  # DP 1
    (["--bf16", "--zero-stage", "3"], 1, False),
    (["--bf16", "--bf16-optimizer", "deepspeed"], 1, False),
    (["--bf16", "--bf16-optimizer", "local"], 4, True),  # asked for: replicated at DP 4
    ([], 1, False),  # fp32
])
def test_auto_picks_local_only_where_deepspeed_would_shard_nothing(flags, world_size, local):
    assert uses_local_bf16_optimizer(_cfg(*flags), world_size) is local


def test_json_asking_bf16_accumulation_or_offload_keeps_deepspeed(tmp_path):
    for extra in ({"data_types": {"grad_accum_dtype": "bf16"}},
                  {"zero_optimization": {"stage": 1, "offload_optimizer": {"device": "cpu"}}}):
        path = tmp_path / "ds.json"
        path.write_text(__import__("json").dumps({"bf16": {"enabled": True}, **extra}))
        assert not uses_local_bf16_optimizer(_cfg("--bf16", "--deepspeed_config", str(path)), 1)


def test_deepspeed_runs_the_local_optimizer_as_fp32_without_its_own_clipping():
    ds = build_deepspeed_config(_cfg("--bf16", "--deepspeed_config",
                                     "ds_configs/zero1_bf16.json", "--clip-grad", "0.5"), 1)
    assert ds["bf16"] == {"enabled": False} and ds["fp16"] == {"enabled": False}
    assert ds["zero_optimization"]["stage"] == 0 and "data_types" not in ds
    assert ds["gradient_clipping"] == 0.0  # the optimizer clips to --clip-grad on the device
    assert (ds["train_batch_size"], ds["gradient_accumulation_steps"]) == (8, 4)
    ds = build_deepspeed_config(_cfg("--bf16", "--deepspeed_config",
                                     "ds_configs/zero1_bf16.json", "--bf16-optimizer",
                                     "deepspeed", "--clip-grad", "0.5"), 1)
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 1
    assert ds["gradient_clipping"] == 0.5


@pytest.mark.parametrize("flags, message", [
    (["--bf16-optimizer", "local"], "--bf16-optimizer local needs --bf16"),
    (["--bf16", "--bf16-optimizer", "local", "--pipeline-model-parallel-size", "2"],
     "--pipeline-model-parallel-size 1 only"),
])
def test_local_without_bf16_or_with_pipeline_is_a_config_error(flags, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(_cfg(*flags), 2)


def test_checkpoint_of_deepspeeds_optimizer_is_refused_by_the_local_one(tmp_path):
    tag = tmp_path / "global_step4"
    tag.mkdir()
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"")
    check_optimizer_files(str(tmp_path), "global_step4", local_bf16=True)  # ours: fine
    (tag / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")
    check_optimizer_files(str(tmp_path), "global_step4", local_bf16=False)
    with pytest.raises(ValueError, match="bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt.*"
                                         "--bf16-optimizer deepspeed"):
        check_optimizer_files(str(tmp_path), "global_step4", local_bf16=True)


def test_local_communication_dtype_is_deepspeeds_key(tmp_path):
    """--bf16-optimizer local all-reduces in DeepSpeed's communication_data_type: bf16 unless
    the JSON says fp32 (as DeepSpeed for bf16); another value is refused by name, and the key
    does not reach DeepSpeed (which would run its own reduction as an fp32 run)."""
    import json

    import torch

    from megatron.trainer.ds_config import local_communication_dtype
    flags = ["--bf16", "--bf16-optimizer", "local"]
    assert local_communication_dtype(_cfg(*flags), 2) == torch.bfloat16
    for value, dtype in (("fp32", torch.float32), ("BF16", torch.bfloat16), ("fp16", None)):
        path = tmp_path / f"{value}.json"
        path.write_text(json.dumps({"bf16": {"enabled": True},
                                    "communication_data_type": value}))
        cfg = _cfg(*flags, "--deepspeed_config", str(path))
        if dtype is None:
            with pytest.raises(ValueError, match=f"{path}.*communication_data_type 'fp16'"):
                local_communication_dtype(cfg, 2)
        else:
            assert local_communication_dtype(cfg, 2) == dtype
            assert "communication_data_type" not in build_deepspeed_config(cfg, 2)
