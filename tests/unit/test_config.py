import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from megatron.config.cli import build_parser, parse_config
from megatron.config.schema import Config
from megatron.config.validate import ConfigError, validate_config

TRAIN = ["--train-iters", "10", "--mock-data"]


def test_megatron_deepspeed_flags_map_to_config_fields():
    cfg = parse_config([
        "--num-layers", "6", "--hidden-size", "96", "--num-attention-heads", "6",
        "--seq-length", "256", "--max-position-embeddings", "512",
        "--tensor-model-parallel-size", "2", "--micro-batch-size", "3",
        "--global-batch-size", "12", "--lr", "6e-5", "--min-lr", "6e-6",
        "--lr-decay-style", "cosine", "--lr-warmup-samples", "100", "--clip-grad", "0.5",
        "--weight-decay", "0.1", "--adam-beta1", "0.85", "--adam-beta2", "0.95",
        "--adam-eps", "1e-6", "--bf16", "--seed", "42", "--split", "949,50,1",
        "--data-path", "0.7", "a_text_document", "0.3", "b_text_document",
        "--position-embedding-type", "alibi", "--glu-activation", "geglu", "--embed-layernorm",
        "--init-method-std", "0.0048", "--deepspeed", "--deepspeed_config", "x.json",
        "--zero-stage", "1", "--save", "ck", "--load", "ck", "--save-interval", "5",
        "--eval-interval", "7", "--eval-iters", "3", "--log-interval", "2",
        "--tensorboard-dir", "tb", "--exit-duration-in-mins", "30", "--train-samples", "99",
        "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", "spm.model",
        "--disable-bias-linear", "--untie-embeddings-and-output-weights"])
    m, t, o, d = cfg.model, cfg.training, cfg.optimizer, cfg.data
    assert (m.num_layers, m.hidden_size, m.num_attention_heads) == (6, 96, 6)
    assert (m.seq_length, m.max_positions) == (256, 512)
    assert (m.position_embedding_type, m.glu_activation, m.embed_layernorm) == \
        ("alibi", "geglu", True)
    assert m.init_method_std == 0.0048 and not m.add_bias_linear
    assert m.untie_embeddings_and_output_weights
    assert cfg.parallel.tensor_model_parallel_size == 2
    assert (t.micro_batch_size, t.global_batch_size, t.bf16, t.seed) == (3, 12, True, 42)
    assert (t.lr_warmup_samples, t.train_samples, t.zero_stage) == (100, 99, 1)
    assert t.deepspeed_config == "x.json" and t.exit_duration_in_mins == 30
    assert (o.lr, o.min_lr, o.clip_grad, o.weight_decay) == (6e-5, 6e-6, 0.5, 0.1)
    assert (o.adam_beta1, o.adam_beta2, o.adam_eps) == (0.85, 0.95, 1e-6)
    assert d.data_path == ("0.7", "a_text_document", "0.3", "b_text_document")
    assert (d.split, d.tokenizer_model) == ("949,50,1", "spm.model")
    assert (cfg.checkpoint.save, cfg.checkpoint.save_interval) == ("ck", 5)
    assert (cfg.logging.log_interval, cfg.logging.tensorboard_dir) == (2, "tb")


@pytest.mark.parametrize("flag,value", [("absolute", "learned_absolute"), ("rotary", "rope"),
                                        ("rope", "rope"), ("sinusoidal", "sinusoidal")])
def test_position_embedding_aliases(flag, value):
    cfg = parse_config(["--position-embedding-type", flag])
    assert cfg.model.position_embedding_type == value


def test_swiglu_and_openai_gelu_shortcuts():
    cfg = parse_config(["--swiglu", "--openai-gelu"])
    assert cfg.model.glu_activation == "swiglu" and cfg.model.activation == "gelu_tanh"


@pytest.mark.parametrize("glu", ["geglu", "swiglu", "reglu", "liglu"])
def test_glu_ffn_size_is_megatron_deepspeeds(glu):
    """--glu-activation keeps FFN 4h (fc1 outputs 2 x 4h), as Megatron-DeepSpeed's
    arguments.py and ParallelMLP do, so BigScience argument lists build the same model."""
    m = parse_config(["--hidden-size", "128", "--glu-activation", glu]).model
    assert (m.glu_activation, m.ffn_hidden_size, m.ffn_size) == (glu, None, 512)
    m = parse_config(["--hidden-size", "128", "--glu-activation", glu,
                      "--ffn-hidden-size", "320"]).model
    assert m.ffn_size == 320


@pytest.mark.parametrize("hidden,ffn", [(128, 320), (1024, 2688), (4096, 10880), (96, 256)])
def test_swiglu_ffn_size_is_megatron_lms(hidden, ffn):
    """--swiglu: Megatron-LM's int((4h x 2/3) / 64) x 64, rounded down (128 -> 341.3 -> 320)."""
    m = parse_config(["--hidden-size", str(hidden), "--num-attention-heads", "4",
                      "--swiglu"]).model
    assert (m.glu_activation, m.ffn_hidden_size, m.ffn_size) == ("swiglu", ffn, ffn)
    m = parse_config(["--hidden-size", str(hidden), "--swiglu", "--ffn-hidden-size", "200"]).model
    assert m.ffn_size == 200  # an explicit size wins
    assert parse_config(["--swiglu", "--glu-activation", "swiglu"]).model.glu_activation == \
        "swiglu"


def test_swiglu_contradictions_and_empty_ffn(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--swiglu", "--glu-activation", "geglu"])
    assert "--swiglu contradicts --glu-activation geglu" in capsys.readouterr().err
    # Megatron-LM's rule gives 0 below hidden 24
    msg = _error(TRAIN + ["--hidden-size", "16", "--swiglu"])
    assert "FFN size 0" in msg and "--hidden-size 16" in msg and "--ffn-hidden-size" in msg


def test_glu_mlp_shapes(tp1_layout):
    """fc1 has 2 x ffn outputs with a GLU, fc2 has ffn inputs; count_parameters agrees."""
    from megatron.model.gpt import GPTModel
    from megatron.trainer.metrics import count_parameters
    for argv, ffn in ((["--glu-activation", "swiglu"], 512), (["--swiglu"], 320), ([], 512)):
        m = parse_config(["--hidden-size", "128", "--num-layers", "1", *argv]).model
        m = dataclasses.replace(m, vocab_size=128)
        model = GPTModel(m)
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        fc1 = next(v for n, v in shapes.items() if n.endswith("fc1.weight"))
        fc2 = next(v for n, v in shapes.items() if n.endswith("fc2.weight"))
        assert fc1 == ((2 if argv else 1) * ffn, 128) and fc2 == (128, ffn), (argv, shapes)
        assert count_parameters(m) == sum(p.numel() for p in model.parameters())


def test_unknown_flag_suggests_closest(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--num-layer", "2"])
    assert "unknown flag --num-layer (did you mean --num-layers?)" in capsys.readouterr().err


def test_every_flag_has_help_text():
    parser = build_parser()
    for action in parser._actions:
        if action.option_strings:
            assert action.help and len(action.help) > 5, action.option_strings


def test_help_runs_and_lists_flags():
    out = subprocess.run([sys.executable, "pretrain_gpt.py", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for flag in ("--tensor-model-parallel-size", "--deepspeed_config", "--rampup-batch-size",
                 "--glu-activation", "--exit-duration-in-mins"):
        assert flag in out.stdout


def test_cli_reference_in_sync():
    out = subprocess.run([sys.executable, "tools/gen_cli_reference.py", "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


NO_EFFECT_ARGV = ["--codecarbon-dir", "cc", "--log-level", "info", "--log-level-replica", "error",
                  "--tensorboard-queue-size", "5", "--valid-num-workers", "2",
                  "--deepspeed-activation-checkpointing",
                  "--abort-on-unmet-fused-kernel-constraints", "--log-batch-size-to-tensorboard",
                  "--log-validation-ppl-to-tensorboard"]


def test_no_effect_flags_are_named_in_one_warning():
    from megatron.config.validate import no_effect_warning
    assert no_effect_warning(parse_config(TRAIN)) is None  # none given: no warning
    msg = no_effect_warning(parse_config(TRAIN + NO_EFFECT_ARGV))
    flags = [a for a in NO_EFFECT_ARGV if a.startswith("--")]
    for flag in flags:
        assert flag in msg, flag
    assert "--codecarbon-dir cc" in msg and "--tensorboard-queue-size 5" in msg
    assert msg.endswith("accepted for Megatron-DeepSpeed compatibility, has no effect here "
                        "(see docs/cli.md)")
    # every flag whose help says it is accepted for compatibility with no effect is covered
    said = {o for a in build_parser()._actions for o in a.option_strings[:1]
            if a.help.startswith("Accepted for compatibility")}
    assert said == set(flags)
    only = no_effect_warning(parse_config(TRAIN + ["--log-level", "info"]))
    assert only.startswith("--log-level info: ") and "--codecarbon-dir" not in only


@pytest.mark.parametrize("rank,warned", [("0", True), ("1", False)])
def test_pretrain_cli_warns_about_no_effect_flags_on_rank_0(rank, warned):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    env.update(RANK=rank, WORLD_SIZE="2")
    out = subprocess.run([sys.executable, "pretrain_gpt.py", "--mock-data", "--train-iters", "1",
                          "--dry-run", "--codecarbon-dir", "cc", "--log-level", "info"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    warning = ("pretrain_gpt.py: warning: --log-level info, --codecarbon-dir cc: accepted for "
               "Megatron-DeepSpeed compatibility, has no effect here")
    assert (warning in out.stderr) == warned, out.stderr[-2000:]
    assert out.stderr.count("has no effect here") == int(warned)


def test_config_round_trips_through_dict():
    cfg = parse_config(["--data-path", "1", "x", "--rampup-batch-size", "4", "4", "100"])
    again = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def _error(argv, world_size=1):
    with pytest.raises(ConfigError) as e:
        validate_config(parse_config(argv), world_size)
    return str(e.value)


def test_heads_not_divisible_by_tp():
    msg = _error(TRAIN + ["--num-attention-heads", "6", "--hidden-size", "96",
                          "--tensor-model-parallel-size", "4"], world_size=4)
    assert "--num-attention-heads 6" in msg and "--tensor-model-parallel-size 4" in msg


def test_hidden_not_divisible_by_heads():
    msg = _error(TRAIN + ["--hidden-size", "100", "--num-attention-heads", "8"])
    assert "--hidden-size 100" in msg and "--num-attention-heads 8" in msg


def test_fewer_layers_than_pipeline_stages():
    from megatron.config.validate import check_model_shape
    cfg = parse_config(TRAIN + ["--num-layers", "1", "--pipeline-model-parallel-size", "2",
                                "--pp-partition-method", "uniform"])
    with pytest.raises(ConfigError, match="--num-layers 1 .*--pipeline-model-parallel-size 2"):
        check_model_shape(cfg)


def test_layers_not_divisible_by_pipeline_stages_under_the_default_partition():
    msg = _error(TRAIN + ["--num-layers", "3", "--pipeline-model-parallel-size", "2"],
                 world_size=2)
    assert "--num-layers 3 is not divisible by --pipeline-model-parallel-size 2" in msg
    assert "--pp-partition-method 'type:transformer|embedding'" in msg
    assert "--pp-partition-method parameters" in msg
    # the same default given explicitly is the same split
    assert "not divisible" in _error(TRAIN + ["--num-layers", "3", "--pipeline-model-parallel-"
                                              "size", "2", "--pp-partition-method",
                                              "type:transformer"], world_size=2)


@pytest.mark.parametrize("method", ["type:transformer|embedding", "parameters", "uniform"])
def test_uneven_layers_allowed_with_a_chosen_partition_method(method):
    # BLOOM-176B: 70 layers on 12 stages, embedding and head counted as layers
    validate_config(parse_config(TRAIN + ["--num-layers", "70", "--pipeline-model-parallel-size",
                                          "12", "--pp-partition-method", method]), 12)
    validate_config(parse_config(TRAIN + ["--num-layers", "4", "--pipeline-model-parallel-size",
                                          "2"]), 2)  # even: the default is fine


def test_global_batch_not_divisible_by_micro_times_dp():
    msg = _error(TRAIN + ["--micro-batch-size", "3", "--global-batch-size", "8"], world_size=2)
    assert "--global-batch-size 8" in msg and "--micro-batch-size 3" in msg
    assert "data-parallel size 2" in msg


def test_world_size_not_tp_times_pp_times_dp():
    msg = _error(TRAIN + ["--tensor-model-parallel-size", "2"], world_size=3)
    assert "world size 3" in msg and "--tensor-model-parallel-size 2" in msg


def test_deepspeed_config_batch_contradiction(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": 64, "train_micro_batch_size_per_gpu": 2}))
    msg = _error(TRAIN + ["--micro-batch-size", "2", "--global-batch-size", "32",
                          "--deepspeed_config", str(path)])
    assert "train_batch_size = 64" in msg and "--global-batch-size = 32" in msg


def test_deepspeed_config_precision_contradiction(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"bf16": {"enabled": True}}))
    msg = _error(TRAIN + ["--deepspeed_config", str(path)])
    assert "bf16.enabled" in msg and "--bf16" in msg


def test_deepspeed_config_missing_or_invalid(tmp_path):
    assert "no such file" in _error(TRAIN + ["--deepspeed_config", str(tmp_path / "nope.json")])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not valid JSON" in _error(TRAIN + ["--deepspeed_config", str(bad)])


def test_missing_data_files_named(tmp_path):
    (tmp_path / "corpus_text_document.bin").write_bytes(b"")
    prefix = str(tmp_path / "corpus_text_document")
    msg = _error(["--train-iters", "1", "--data-path", prefix, "--tokenizer-type",
                  "ByteLevelTokenizer"])
    assert prefix + ".idx" in msg and ".bin," not in msg


def test_train_length_required():
    assert "--train-iters" in _error(["--mock-data"])


@pytest.mark.parametrize("argv,flag", [
    (["--sequence-parallel"], "--sequence-parallel"),
    (["--partition-activations"], "--partition-activations"),
])
def test_flags_of_later_features_fail_clearly(argv, flag):
    msg = _error(TRAIN + argv)
    assert flag in msg and "not implemented yet" in msg


def test_prefix_lm_flags():
    msg = _error(TRAIN + ["--loss-on-targets-only"])
    assert "--loss-on-targets-only" in msg and "--prefix-lm" in msg
    for argv in (["--prefix-lm"], ["--prefix-lm", "--loss-on-targets-only"],
                 ["--prefix-lm", "--loss-on-targets-only", "--reset-attention-mask"]):
        cfg = parse_config(TRAIN + argv)
        validate_config(cfg, 1)  # masks.py combines prefix and document masks
        assert cfg.model.prefix_lm


def test_pretrain_cli_reports_config_errors_without_traceback():
    out = subprocess.run([sys.executable, "pretrain_gpt.py", "--mock-data", "--train-iters", "1",
                          "--hidden-size", "100", "--num-attention-heads", "8"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "error: --hidden-size 100 is not divisible by --num-attention-heads 8" in out.stderr
    assert "Traceback" not in out.stderr


# flag combinations megatron/model/validate.py refuses -> what the error says
MODEL_ERRORS = [
    (["--position-embedding-type", "alibi", "--rotary-percent", "0.5"],
     "--position-embedding-type alibi does not use rotary embeddings, but --rotary-percent is "
     "set to 0.5"),
    (["--rotary-percent", "1.5"], "--rotary-percent 1.5 must be in (0, 1]"),
    (["--attention-kernel", "flex", "--attention-dropout", "0.1"],
     "--attention-kernel flex does not implement attention dropout, but --attention-dropout is "
     "0.1"),
]


@pytest.mark.parametrize("argv,needle", MODEL_ERRORS)
def test_model_config_errors_are_start_up_errors(argv, needle):
    """megatron/model/validate.py's check runs in validate_config: ConfigError, not a
    ValueError from inside the model build on every rank."""
    assert needle in _error(TRAIN + argv)


@pytest.mark.parametrize("argv,needle", MODEL_ERRORS)
def test_pretrain_cli_reports_model_errors_without_traceback(argv, needle):
    out = subprocess.run([sys.executable, "pretrain_gpt.py", "--mock-data", "--train-iters", "1",
                          *argv], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "pretrain_gpt.py: error: " in out.stderr and needle in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without a GPU")
@pytest.mark.parametrize("flags, needle", [
    (["--bf16", "--mlp-kernel", "quack"], "--mlp-kernel quack cannot run here: it needs a CUDA GPU"),
    (["--bf16", "--enable-cuda-graph"], "--enable-cuda-graph needs CUDA GPUs"),
    (["--bf16", "--attention-kernel", "fa4"], "--attention-kernel fa4 cannot run here"),
])
def test_pretrain_cli_reports_gpu_only_options_on_cpu_without_traceback(flags, needle):
    """Refused where the model meets its device (build_engine), as cleanly as a flag error."""
    out = subprocess.run([sys.executable, "pretrain_gpt.py", "--mock-data", "--train-iters", "1",
                          "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads",
                          "4", "--seq-length", "32", "--micro-batch-size", "2",
                          "--hidden-dropout", "0", "--attention-dropout", "0", *flags],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "pretrain_gpt.py: error: " in out.stderr and needle in out.stderr, out.stderr[-3000:]
    assert "Traceback" not in out.stderr


def test_dry_run_reports_model_and_pipeline_split_errors(capsys):
    from megatron.trainer.dry_run import dry_run
    cfg = parse_config(TRAIN + ["--num-layers", "3", "--pipeline-model-parallel-size", "2",
                                "--rotary-percent", "1.5"])
    assert dry_run(cfg, 2) == 1
    out = capsys.readouterr().out
    assert "--num-layers 3 is not divisible by --pipeline-model-parallel-size 2" in out
    assert "--rotary-percent 1.5 must be in (0, 1]" in out


@pytest.mark.parametrize("argv,needle", [
    (["--rampup-batch-size", "6", "4", "100", "--global-batch-size", "16"],
     "minus START 6 is not a multiple of INCREMENT 4"),
    (["--rampup-batch-size", "2", "2", "100", "--global-batch-size", "16",
      "--micro-batch-size", "4"], "multiples of --micro-batch-size x data-parallel size = 4"),
    (["--rampup-batch-size", "32", "4", "100", "--global-batch-size", "16"],
     "START <= --global-batch-size 16"),
])
def test_rampup_errors(argv, needle):
    assert needle in _error(["--train-samples", "1000", "--mock-data"] + argv)


def test_rampup_needs_lengths_in_samples():
    msg = _error(TRAIN + ["--rampup-batch-size", "4", "4", "100", "--global-batch-size", "16"])
    assert "--train-iters" in msg and "--train-samples" in msg


def test_batch_sizes_follow_rampup_schedule():
    from megatron.trainer.batch_schedule import batch_size_at, build_batch_calculator, \
        train_iterations
    cfg = parse_config(["--train-samples", "200", "--global-batch-size", "16",
                        "--micro-batch-size", "2", "--rampup-batch-size", "4", "4", "80"])
    calc = build_batch_calculator(cfg, gbs=16, dp=1, rank=0)
    consumed, sizes = 0, []
    while consumed < 200:
        sizes.append(batch_size_at(calc, consumed))
        consumed += sizes[-1]
    # increments every 80 / 3 samples: 4 until 26.7, 8 until 53.3, 12 until 80, then 16
    assert sizes[:7] == [4] * 7 and sizes[7:11] == [8] * 4 and sizes[11:13] == [12] * 2
    assert set(sizes[13:]) == {16}
    assert train_iterations(calc, 200) == (len(sizes), consumed)


def test_skip_train_iteration_range_format():
    assert "expected START-END" in _error(TRAIN + ["--skip-train-iteration-range", "10:20"])
    assert "1 <= START <= END" in _error(TRAIN + ["--skip-train-iteration-range", "20-10"])


def test_eval_harness_flags_are_checked_at_start_up(tmp_path):
    from megatron.config.validate import check_eval_harness
    from megatron.eval.periodic import PeriodicHarness
    base = ["--train-iters", "1", "--eval-harness-tasks", "tiny_mc"]
    with pytest.raises(ConfigError, match="--pipeline-model-parallel-size 1"):
        check_eval_harness(parse_config(base + ["--pipeline-model-parallel-size", "2"]))
    with pytest.raises(ConfigError, match="--eval-harness-include-path .*not a directory"):
        check_eval_harness(parse_config(base + ["--eval-harness-include-path",
                                                str(tmp_path / "nope")]))
    cfg = parse_config(["--train-iters", "1", "--eval-harness-tasks", "tiny_mc,no_such_task",
                        "--eval-harness-include-path", "tests/fixtures/eval_tasks"])
    check_eval_harness(cfg)
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['no_such_task'\]"):
        PeriodicHarness(cfg, layout=None, model=None, tokenizer=None)
