"""The examples/slurm recipes: their exact argument lists parse, and pass start-up validation
for their GPU counts; BLOOM-176B's are BigScience's own flags."""
import os
import re
import subprocess
from pathlib import Path

import pytest

from megatron.config.cli import build_parser, config_from_args
from megatron.config.validate import ConfigError, check_batch, check_deepspeed_config, \
    check_model_shape, check_not_implemented

ROOT = Path(__file__).resolve().parents[2]
SLURM = ROOT / "examples" / "slurm"

# BigScience's tr11-176B-ml.slurm (bigscience-workshop/bigscience, train/tr11-176B-ml, as of
# commit e726b15), flag by flag (values of its shell variables substituted).
BLOOM_FLAGS = [
    "--tensor-model-parallel-size", "--pipeline-model-parallel-size", "--pp-partition-method",
    "--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length",
    "--max-position-embeddings", "--micro-batch-size", "--rampup-batch-size",
    "--global-batch-size", "--train-samples", "--tokenizer-type", "--tokenizer-name-or-path",
    "--init-method-std", "--embed-layernorm", "--sync-tp-duplicated-parameters", "--bf16",
    "--seed", "--position-embedding-type", "--checkpoint-activations",
    "--abort-on-unmet-fused-kernel-constraints", "--kill-switch-path", "--pad-vocab-size-to",
    "--optimizer", "--adam-beta1", "--adam-beta2", "--adam-eps", "--lr", "--min-lr",
    "--lr-decay-style", "--lr-decay-samples", "--lr-warmup-samples", "--clip-grad",
    "--weight-decay", "--exit-duration-in-mins", "--log-interval", "--save-interval",
    "--eval-interval", "--eval-iters", "--tensorboard-dir", "--tensorboard-queue-size",
    "--log-timers-to-tensorboard", "--log-batch-size-to-tensorboard",
    "--log-validation-ppl-to-tensorboard", "--save", "--load",
    "--train-weighted-split-paths-path", "--valid-weighted-split-paths-path", "--num-workers",
    "--valid-num-workers", "--data-impl", "--distributed-backend", "--deepspeed",
    "--deepspeed_config", "--zero-stage", "--deepspeed-activation-checkpointing",
]


def recipe_args(name: str) -> list:
    """The argument list a recipe passes to pretrain_gpt.py (GPT3D_PRINT_ARGS in common.sh)."""
    env = dict(os.environ, GPT3D_PRINT_ARGS="1", SLURM_SUBMIT_DIR=str(ROOT), DATA="data/x",
               TOKENIZER="data/spm.model")
    out = subprocess.run(["bash", str(SLURM / name)], env=env, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode().split("\0")[:-1]


def gpus(name: str) -> int:
    text = (SLURM / name).read_text()
    nodes = int(re.search(r"#SBATCH --nodes=(\d+)", text).group(1))
    return nodes * int(re.search(r"#SBATCH --gpus-per-node=(\d+)", text).group(1))


def test_bloom_recipe_passes_bigscience_flags_and_our_parser_accepts_each():
    args = recipe_args("bloom_176b.sbatch")
    assert [a for a in args if a.startswith("--")] == BLOOM_FLAGS
    cfg = config_from_args(build_parser().parse_args(args))
    m, t, o, par = cfg.model, cfg.training, cfg.optimizer, cfg.parallel
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.seq_length) == \
        (70, 14336, 112, 2048)
    assert (m.pad_vocab_size_to, m.position_embedding_type, m.embed_layernorm) == \
        (250880, "alibi", True)
    assert m.init_method_std == 0.0048 and m.activation == "gelu"
    assert (par.tensor_model_parallel_size, par.pipeline_model_parallel_size) == (4, 12)
    assert par.pp_partition_method == "type:transformer|embedding"
    assert (t.micro_batch_size, t.global_batch_size, t.rampup_batch_size) == \
        (2, 2048, (192, 16, 9_765_625))
    assert (t.train_samples, t.lr_decay_samples, t.lr_warmup_samples) == \
        (220_000_000, 200_000_000, 183_105)
    assert (o.lr, o.min_lr, o.adam_beta1, o.adam_beta2, o.weight_decay, o.clip_grad) == \
        (6e-5, 6e-6, 0.9, 0.95, 0.1, 1.0)
    assert t.bf16 and t.zero_stage == 0 and t.checkpoint_activations and t.seed == 42
    assert cfg.data.tokenizer_type == "HuggingFaceTokenizer"  # PretrainedFromHF
    assert gpus("bloom_176b.sbatch") == 384
    check_model_shape(cfg)
    check_batch(cfg, 384)
    check_deepspeed_config(cfg, 384)
    check_not_implemented(cfg)  # every flag is implemented
    assert par.sync_tp_duplicated_parameters
    assert cfg.data.train_weighted_split_paths_path == "data/train-splits.txt"
    assert cfg.data.valid_weighted_split_paths_path == "data/valid-splits.txt"


@pytest.mark.parametrize("name", ["gpt_1.3b.sbatch", "gpt_13b.sbatch", "gpt3_175b.sbatch",
                                  "tiny_cpu.sbatch"])
def test_recipe_is_valid_for_its_gpu_count(name):
    cfg = config_from_args(build_parser().parse_args(recipe_args(name)))
    world = gpus(name) if "gpus-per-node" in (SLURM / name).read_text() else 2
    check_not_implemented(cfg)
    check_model_shape(cfg)
    check_batch(cfg, world)
    check_deepspeed_config(cfg, world)


def test_refused_bigscience_flags_say_not_implemented():
    for flags in (["--partition-activations"],):
        cfg = config_from_args(build_parser().parse_args(flags))
        with pytest.raises(ConfigError, match="not implemented yet"):
            check_not_implemented(cfg)


def test_bloom_recipe_dry_run_prints_partition_and_plan_on_cpu():
    import sys
    args = recipe_args("bloom_176b.sbatch")
    out = subprocess.run([sys.executable, "pretrain_gpt.py", *args, "--dry-run",
                          "--dry-run-world-size", "384", "--dry-run-gpu", "A100-80GB"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for text in ("topology ['pipe', 'data', 'model'] [12, 8, 4]", "176,247,271,424 parameters",
                 "    0  5 layers +embedding", "   11  5 layers +projection +head",
                 "328.3 GiB in bf16", "pipeline bubble: 8.6%", "fits"):
        assert text in out.stdout, out.stdout


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "ds_configs").glob("*.json")))
def test_ds_configs_are_valid_with_matching_flags(name):
    import json
    from megatron.trainer.ds_config import build_deepspeed_config
    ds = json.loads((ROOT / "ds_configs" / name).read_text())
    precision = [f"--{k}" for k in ("bf16", "fp16") if ds.get(k, {}).get("enabled")]
    cfg = config_from_args(build_parser().parse_args(
        ["--train-iters", "1", "--micro-batch-size", "2", "--global-batch-size", "8",
         "--deepspeed_config", f"ds_configs/{name}", *precision]))
    full = build_deepspeed_config(cfg, 2)
    assert full["train_batch_size"] == 8 and full["gradient_accumulation_steps"] == 2
    if "--fp16" in precision:
        assert full["fp16"]["loss_scale"] == 0  # dynamic loss scaling
    if name == "zero0_bf16.json":  # DeepSpeed 0.19 runs BF16_Optimizer only at stage 1
        assert full["zero_optimization"]["stage"] == 1


def test_ds_config_contradicting_clip_grad_names_both(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text('{"gradient_clipping": 0.5}')
    cfg = config_from_args(build_parser().parse_args(
        ["--train-iters", "1", "--clip-grad", "1.0", "--deepspeed_config", str(path)]))
    with pytest.raises(ConfigError, match="gradient_clipping = 0.5 contradicts --clip-grad = 1.0"):
        check_deepspeed_config(cfg, 1)
