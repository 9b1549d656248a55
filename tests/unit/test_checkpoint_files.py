"""Which checkpoint --load picks, and the errors for unusable ones (no tensors involved)."""
import json

import pytest

from megatron.config.cli import parse_config
from megatron.trainer.checkpoint import CheckpointError, check_compatible, find_checkpoint, \
    write_config_json


def _cfg(*flags):
    return parse_config(["--train-iters", "1", *flags]).replace(model={"vocab_size": 512})


def test_empty_load_dir_starts_fresh_only_when_it_is_the_save_dir(tmp_path):
    assert find_checkpoint(str(tmp_path), str(tmp_path)) is None
    with pytest.raises(CheckpointError, match="no checkpoint there"):
        find_checkpoint(str(tmp_path), None)
    with pytest.raises(CheckpointError, match="no checkpoint there"):
        find_checkpoint(str(tmp_path), str(tmp_path / "other"))


def test_latest_naming_a_missing_tag(tmp_path):
    (tmp_path / "latest").write_text("global_step7")
    with pytest.raises(CheckpointError, match="latest names global_step7, but .* not exist"):
        find_checkpoint(str(tmp_path), str(tmp_path))


def test_interrupted_save_leaves_the_previous_checkpoint(tmp_path):
    """A save killed before its rename leaves only <tag>.tmp: latest still names the old one."""
    cfg = _cfg()
    write_config_json(cfg, str(tmp_path), "global_step4")
    (tmp_path / "latest").write_text("global_step4")
    (tmp_path / "global_step8.tmp").mkdir()
    (tmp_path / "global_step8.tmp" / "mp_rank_00_model_states.pt").write_bytes(b"\0" * 10)
    tag = find_checkpoint(str(tmp_path), str(tmp_path))
    assert tag == "global_step4"
    check_compatible(str(tmp_path), tag, cfg)


def test_different_model_shape_is_refused_naming_fields(tmp_path):
    write_config_json(_cfg("--hidden-size", "64"), str(tmp_path), "global_step1")
    with pytest.raises(CheckpointError,
                       match="hidden_size: checkpoint 64 vs flags 128") as e:
        check_compatible(str(tmp_path), "global_step1", _cfg("--hidden-size", "128"))
    assert str(tmp_path) in str(e.value)


def test_missing_or_corrupt_config(tmp_path):
    (tmp_path / "global_step1").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        check_compatible(str(tmp_path), "global_step1", _cfg())
    (tmp_path / "global_step1" / "config.json").write_text("{truncated")
    with pytest.raises(CheckpointError, match="config.json is corrupt"):
        check_compatible(str(tmp_path), "global_step1", _cfg())


def test_other_layout_is_refused_with_the_way_to_resume(tmp_path):
    from megatron.trainer.checkpoint import check_same_layout
    write_config_json(_cfg(), str(tmp_path), "global_step1")
    (tmp_path / "global_step1" / "layout.json").write_text('{"tp": 2, "pp": 2, "dp": 2}')
    check_same_layout(str(tmp_path), "global_step1", 2, 2, 2)
    with pytest.raises(CheckpointError) as e:
        check_same_layout(str(tmp_path), "global_step1", 1, 2, 2)
    assert "saved at TP 2 x PP 2 x DP 2, this run is TP 1 x PP 2 x DP 2" in str(e.value)
    assert "torchrun --nproc-per-node 8 tools/checkpoint_to_universal.py" in str(e.value)
    check_same_layout(str(tmp_path), "global_step1", 2, 2, None)  # weights only: any DP
