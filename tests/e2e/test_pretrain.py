"""pretrain_gpt.py end to end on real text: training, parallel layouts, checkpoint and resume."""
import json
import math
import re

import pytest

from cli_runner import losses, pretrain

pytestmark = pytest.mark.slow


def test_two_rank_data_parallel_run_learns_saves_and_resumes(tiny_data, tmp_path):
    ck = tmp_path / "ck"
    first = pretrain(tiny_data, 2, "--micro-batch-size", "4", "--global-batch-size", "16",
                     "--train-iters", "40", "--eval-interval", "20", "--eval-iters", "2",
                     "--save", str(ck), "--save-interval", "20")
    out = first.stdout
    assert "layout TP1 x PP1 x DP2 = 2 ranks" in out
    curve = losses(out)
    assert sorted(curve) == list(range(1, 41))
    assert curve[1] == pytest.approx(math.log(512), rel=0.1)  # starts near ln(padded vocab)
    assert sum(curve[i] for i in range(36, 41)) / 5 < 0.85 * curve[1]
    assert "tokens/s" in out and "validation loss at iteration 40" in out
    assert "test loss at iteration 40" in out
    latest = (ck / "latest").read_text().strip()
    assert latest == "global_step40"
    saved = json.loads((ck / latest / "config.json").read_text())
    assert saved["model"]["vocab_size"] == 512 and saved["training"]["train_iters"] == 40

    resumed = pretrain(tiny_data, 2, "--micro-batch-size", "4", "--global-batch-size", "16",
                       "--train-iters", "44", "--eval-interval", "100", "--eval-iters", "2",
                       "--load", str(ck))
    assert f"resumed from {ck}/global_step40: iteration 40, 640 samples consumed" in \
        resumed.stdout
    after = losses(resumed.stdout)
    assert sorted(after) == [41, 42, 43, 44]
    assert all(v < curve[1] * 0.9 for v in after.values())  # continued, not restarted


def test_tensor_and_data_parallel_runs_match_single_process(tiny_data):
    """Same seed and data: TP2 and DP2 give the single-process per-step losses (fp32). TP2 runs
    with BLOOM's --sync-tp-duplicated-parameters: averaging identical copies changes nothing."""
    common = ("--global-batch-size", "8", "--train-iters", "4", "--eval-iters", "1",
              "--eval-interval", "100")
    single = losses(pretrain(tiny_data, 1, "--micro-batch-size", "8", *common).stdout)
    tp2 = losses(pretrain(tiny_data, 2, "--micro-batch-size", "8",
                          "--tensor-model-parallel-size", "2", "--sync-tp-duplicated-parameters",
                          *common).stdout)
    dp2 = losses(pretrain(tiny_data, 2, "--micro-batch-size", "2", *common).stdout)
    assert sorted(single) == [1, 2, 3, 4]
    for other in (tp2, dp2):
        for i in single:
            assert other[i] == pytest.approx(single[i], rel=1e-4, abs=1e-4)


def test_missing_data_file_is_a_clear_error(tiny_data, tmp_path):
    out = pretrain(dict(tiny_data, prefix=str(tmp_path / "nope_text_document")), 1,
                   "--train-iters", "4", check=False)
    assert out.returncode != 0
    assert f"--data-path {tmp_path / 'nope_text_document'}: missing" in out.stderr


def test_resume_is_exact_with_dropout_and_rampup(tiny_data, tmp_path):
    """8 steps in one run == 4 steps, stop, resume for 4: identical per-step losses (CPU fp32),
    across a batch-size rampup boundary and the end of LR warmup, with dropout on."""
    flags = ("--micro-batch-size", "2", "--global-batch-size", "8", "--rampup-batch-size",
             "4", "4", "20", "--train-samples", "44", "--lr-warmup-iters", "0", "--lr-warmup-samples", "16",
             "--hidden-dropout", "0.1", "--attention-dropout", "0.1", "--eval-interval", "1000",
             "--eval-iters", "1")
    whole = losses(pretrain(tiny_data, 2, *flags).stdout)
    ck = tmp_path / "ck"
    first = pretrain(tiny_data, 2, *flags, "--save", str(ck), "--exit-interval", "4")
    assert "exiting at iteration 4" in first.stdout
    second = pretrain(tiny_data, 2, *flags, "--load", str(ck))
    resumed = {**losses(first.stdout), **losses(second.stdout)}
    assert len(whole) == 8 and whole == resumed


def test_kill_switch_saves_and_exits_cleanly(tiny_data, tmp_path):
    """Two ranks see the switch at iteration 1 and agree on it at the next check (one step
    late, so that the host does not wait for the device every step)."""
    ck, switch = tmp_path / "ck", tmp_path / "stop-now"
    switch.write_text("")
    out = pretrain(tiny_data, 2, "--micro-batch-size", "2", "--global-batch-size", "4",
                   "--train-iters", "50", "--save", str(ck), "--kill-switch-path", str(switch))
    assert f"stopping at iteration 2: kill switch {switch}" in out.stdout
    assert (ck / "latest").read_text().strip() == "global_step2"


def test_exit_duration_stops_every_rank_at_the_same_step(tiny_data):
    """--exit-duration-in-mins 0 has passed at the first check; two ranks agree on it at the
    next one (one step late, so that the host does not wait for the device every step)."""
    out = pretrain(tiny_data, 2, "--micro-batch-size", "2", "--global-batch-size", "4",
                   "--train-iters", "50", "--exit-duration-in-mins", "0")
    assert "exiting at iteration 2 (exit condition reached)" in out.stdout
    assert "iteration 3/" not in out.stdout


def test_sigterm_to_one_rank_stops_all_with_a_checkpoint(tiny_data, tmp_path):
    """srun-style launch (one process per rank, SLURM variables): SIGTERM to rank 1 only makes
    both ranks finish the step, save and exit 0."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from cli_runner import ROOT
    from megatron.parallel.launch import free_port

    ck = tmp_path / "ck"
    args = [sys.executable, "pretrain_gpt.py", "--num-layers", "2", "--hidden-size", "32",
            "--num-attention-heads", "4", "--seq-length", "32", "--micro-batch-size", "2",
            "--global-batch-size", "4", "--train-iters", "100000", "--log-interval", "1",
            "--data-path", tiny_data["prefix"], "--tokenizer-type", "SentencePieceTokenizer",
            "--tokenizer-model", tiny_data["spm"], "--split", "90,9,1",
            "--deepspeed_config", "ds_configs/zero1.json", "--save", str(ck)]
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_NTASKS="2",
                   SLURM_LOCALID=str(rank), SLURM_JOB_NODELIST="localhost",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            env.pop(var, None)
        log = open(tmp_path / f"rank{rank}.log", "w")
        procs.append(subprocess.Popen(args, cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
    rank0_log = tmp_path / "rank0.log"
    deadline = time.monotonic() + 300
    while "iteration 3/" not in rank0_log.read_text():
        assert time.monotonic() < deadline, rank0_log.read_text()[-3000:]
        assert all(p.poll() is None for p in procs), rank0_log.read_text()[-3000:]
        time.sleep(0.5)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=300) for p in procs]
    out = rank0_log.read_text()
    assert codes == [0, 0], out[-3000:]
    assert re.search(r"stopping at iteration \d+: SIGTERM \(received by another rank\)", out)
    tag = (ck / "latest").read_text().strip()
    assert (ck / tag / "config.json").exists()


def test_kill_9_during_save_leaves_the_previous_checkpoint_loadable(tiny_data, tmp_path):
    """SIGKILL to the whole job while the second save has written its files into
    global_step10.tmp: `latest` still names global_step5, which resumes the same curve."""
    import os
    import signal
    import subprocess
    import time

    from cli_runner import ROOT, pretrain_cmd

    ck, log_path = tmp_path / "ck", tmp_path / "killed.log"
    flags = ("--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", "14",
             "--eval-interval", "1000", "--eval-iters", "1", "--save", str(ck),
             "--save-interval", "5")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                            "MASTER_ADDR", "MASTER_PORT")}
    with open(log_path, "w") as log:
        job = subprocess.Popen(pretrain_cmd(tiny_data, 2, *flags,
                                            script="tests/e2e/slow_save_pretrain.py"),
                               cwd=ROOT, env=dict(env, OMP_NUM_THREADS="1"), stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while "stalling in save of global_step10.tmp" not in log_path.read_text():
        assert job.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
        time.sleep(0.2)
    partial = ck / "global_step10.tmp"
    assert any(partial.iterdir())  # the engine's files are there, mid-save
    os.killpg(job.pid, signal.SIGKILL)  # the launcher and both ranks, no chance to clean up
    assert job.wait(timeout=60) == -signal.SIGKILL
    assert (ck / "latest").read_text().strip() == "global_step5"
    assert not (ck / "global_step10").exists()
    before = losses(log_path.read_text())
    resumed = pretrain(tiny_data, 2, *flags, "--load", str(ck)).stdout
    assert f"resumed from {ck}/global_step5: iteration 5" in resumed
    after = losses(resumed)
    assert sorted(after) == list(range(6, 15))
    assert {i: after[i] for i in range(6, 11)} == {i: before[i] for i in range(6, 11)}
    assert (ck / "latest").read_text().strip() == "global_step14" and not partial.exists()


def test_load_errors_are_clear_and_nothing_is_overwritten(tiny_data, tmp_path):
    ck = tmp_path / "ck"
    pretrain(tiny_data, 1, "--micro-batch-size", "2", "--train-iters", "3", "--save", str(ck))
    before = sorted(p.name for p in ck.iterdir())
    # no temporary folder left behind (DeepSpeed adds its zero_to_*.py conversion scripts)
    assert [n for n in before if not n.startswith("zero_to_")] == ["global_step3", "latest"]
    other_shape = pretrain(tiny_data, 1, "--micro-batch-size", "2", "--train-iters", "4",
                           "--hidden-size", "64", "--load", str(ck), "--save", str(ck),
                           check=False)
    assert other_shape.returncode != 0
    assert "hidden_size: checkpoint 32 vs flags 64" in other_shape.stderr
    missing = pretrain(tiny_data, 1, "--micro-batch-size", "2", "--train-iters", "4",
                       "--load", str(tmp_path / "typo"), check=False)
    assert missing.returncode != 0 and "no checkpoint there" in missing.stderr
    assert sorted(p.name for p in ck.iterdir()) == before


def test_loss_spike_stop_exits_with_code_3_and_names_the_iteration(tiny_data):
    """With LR 0 the loss only fluctuates, so a tiny threshold must flag a step soon."""
    out = pretrain(tiny_data, 1, "--micro-batch-size", "2", "--train-iters", "60", "--lr", "0",
                   "--lr-warmup-iters", "0", "--loss-spike-threshold", "0.01",
                   "--loss-spike-window", "10", "--loss-spike-action", "stop", check=False)
    assert out.returncode != 0 and "(exitcode: 3)" in out.stderr  # torchrun reports the child's
    assert "loss spike at iteration" in out.stdout
    assert "--skip-train-iteration-range covering iteration" in out.stdout


def test_loss_spike_skip_drops_the_batch_and_training_goes_on(tiny_data):
    """With LR 0 the loss only fluctuates, so a tiny threshold flags steps soon; each flagged
    one is skipped (counted in its log line) and the run goes on to the end."""
    out = pretrain(tiny_data, 2, "--micro-batch-size", "2", "--train-iters", "40", "--lr", "0",
                   "--lr-warmup-iters", "0", "--loss-spike-threshold", "0.01",
                   "--loss-spike-window", "10", "--loss-spike-action", "skip").stdout
    flagged = re.findall(r"loss spike at iteration (\d+): .* - batch skipped, no update", out)
    assert flagged, out[-3000:]
    skipped = {int(i): int(n) for i, n in re.findall(r"iteration (\d+)/40 \|.* skipped (\d+) \|",
                                                     out)}
    assert sorted(skipped) == list(range(1, 41))
    assert {i for i, n in skipped.items() if n} == {int(i) for i in flagged}


def test_skip_train_iteration_range_reads_the_batches_without_updating(tiny_data):
    out = pretrain(tiny_data, 1, "--micro-batch-size", "2", "--global-batch-size", "4",
                   "--train-iters", "6", "--skip-train-iteration-range", "2-3").stdout
    assert sorted(losses(out)) == [1, 4, 5, 6]
    for i in (2, 3):
        assert f"iteration {i} skipped (--skip-train-iteration-range): its 4 samples" in out
    assert "iteration 4/6 | consumed samples 16 |" in out  # the skipped batches were consumed


def test_bigscience_weighted_split_path_files_train_and_validate_each_group(tiny_data, tmp_path):
    """BLOOM's data flags: a train file and a valid file with two groups (as
    load_ratios_meg_ds_format.py writes them); each validation group is logged by name."""
    p = tiny_data["prefix"]
    train, valid = tmp_path / "train-splits.txt", tmp_path / "valid-splits.txt"
    train.write_text(f'"train: 0.6 0:0.45 {p}, 0.4 0.45:0.9 {p}"\n')
    valid.write_text(f'"valid-head: 1 0.9:0.95 {p}" "valid-tail: 1.0 0.950:1.0 {p}"\n')
    out = pretrain(tiny_data, 2, "--micro-batch-size", "2", "--global-batch-size", "8",
                   "--train-iters", "30", "--eval-interval", "15", "--eval-iters", "2",
                   "--log-per-layer-grad-norm",  # rides along: its log field is checked below
                   data_flags=("--train-weighted-split-paths-path", str(train),
                               "--valid-weighted-split-paths-path", str(valid))).stdout
    curve = losses(out)
    assert sorted(curve) == list(range(1, 31)) and curve[30] < curve[1] - 0.5
    for name in ("valid-head", "valid-tail"):
        found = re.findall(rf"validation {name} loss at iteration (\d+) \| lm loss ([0-9.]+)",
                           out)
        assert [int(i) for i, _ in found] == [15, 30], out[-3000:]
        assert float(found[1][1]) < float(found[0][1])
    assert "test loss" not in out  # no test groups given
    worst = re.findall(r"max layer grad norm ([0-9.E+-]+) \((embedding|layers\.[01]|head)\)",
                       out)
    assert len(worst) == 30 and all(float(v) > 0 for v, _ in worst)


def test_eval_harness_during_training_equals_the_standalone_evaluator(tiny_data, tmp_path):
    """--eval-harness-tasks at TP 2 (steps 6 and 12) logs lm-eval scores and writes them to
    TensorBoard; the final ones equal tasks/eval_harness/evaluate.py on the saved checkpoint."""
    import json
    import sys

    from cli_runner import run

    offline = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    ck, tb = tmp_path / "ck", tmp_path / "tb"
    out = pretrain(tiny_data, 2, "--tensor-model-parallel-size", "2", "--micro-batch-size", "4",
                   "--global-batch-size", "8", "--train-iters", "12", "--eval-interval", "100",
                   "--eval-iters", "1", "--eval-harness-tasks", "tiny_mc,tiny_ppl",
                   "--eval-harness-include-path", "tests/fixtures/eval_tasks",
                   "--eval-harness-interval", "6", "--eval-harness-num-fewshot", "0",
                   "--save", str(ck), "--tensorboard-dir", str(tb), env=offline).stdout
    lines = re.findall(r"eval harness at iteration (\d+) \| (.*)", out)
    assert [int(i) for i, _ in lines] == [6, 12], out[-3000:]
    final = dict(re.findall(r"(\S+/\S+) ([0-9.]+)", lines[-1][1]))
    run([sys.executable, "tasks/eval_harness/evaluate.py", "--load", str(ck), "--tasks",
         "tiny_mc,tiny_ppl", "--num-fewshot", "0", "--include-path", "tests/fixtures/eval_tasks",
         "--results-path", str(tmp_path / "r.json")], env=offline)
    ref = json.loads((tmp_path / "r.json").read_text())["results"]
    assert float(final["tiny_mc/acc"]) == pytest.approx(ref["tiny_mc"]["acc,none"], abs=1e-4)
    assert float(final["tiny_ppl/bits_per_byte"]) == pytest.approx(
        ref["tiny_ppl"]["bits_per_byte,none"], rel=1e-3)
    from tools.plot_logs import read_scalars
    logged = read_scalars(tb, "steps")["eval harness/tiny_ppl/bits_per_byte"]
    assert logged[0] == [6, 12]
    # the config used goes to TensorBoard (text "config"), the same as next to the checkpoint
    import ast

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from megatron.config.schema import Config
    acc = EventAccumulator(str(tb), size_guidance={"tensors": 0})
    acc.Reload()
    events = acc.Tensors("config/text_summary")
    assert len(events) == 1
    text = events[0].tensor_proto.string_val[0].decode()
    assert text.startswith("```\n{") and text.endswith("}\n```")
    in_tb = Config.from_dict(ast.literal_eval(text.strip("`\n")))
    saved = Config.from_dict(json.loads((ck / "global_step12" / "config.json").read_text()))
    assert in_tb == saved
    assert (in_tb.parallel.tensor_model_parallel_size, in_tb.training.train_iters,
            in_tb.training.eval_harness_tasks) == (2, 12, "tiny_mc,tiny_ppl")
    assert in_tb.model.vocab_size > 0 and in_tb.logging.tensorboard_dir == str(tb)
