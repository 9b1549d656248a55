"""tools/ablate.py end to end: a tiny fixed-FLOP grid trained on CPU, its table and plots, and
the SLURM job files it writes."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from cli_runner import ROOT, run

TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4",
        "--seq-length", "32", "--micro-batch-size", "8", "--global-batch-size", "8",
        "--lr", "3e-3", "--lr-warmup-iters", "2", "--hidden-dropout", "0",
        "--attention-dropout", "0", "--eval-iters", "1",
        "--deepspeed_config", "ds_configs/zero1.json"]
MOCK = ["--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size", "500"]


@pytest.mark.slow
def test_tiny_fixed_flop_grid_runs_end_to_end(tiny_data, tmp_path):
    """learned+gelu vs rotary+swiglu vs ALiBi+gelu at 3e9 FLOPs each on real text: every run's
    realised budget within 2% of the target (and of each other), finite validation loss and
    BPB, results.csv/.md, both plots and per-run logs; the CSV feeds tools/scaling_fit.py.
    Then held-out BPB and lm-eval scores of a final checkpoint in the table."""
    grid = {"base": TINY + ["--data-path", tiny_data["prefix"], "--split", "90,9,1",
                            "--tokenizer-type", "SentencePieceTokenizer",
                            "--tokenizer-model", tiny_data["spm"],
                            "--train-iters", "999"],  # replaced by the budget
            "budget": {"flops": 3e9},
            "variants": {"learned_gelu": ["--position-embedding-type", "learned_absolute"],
                         "rope_swiglu": ["--position-embedding-type", "rope",
                                         "--glu-activation", "swiglu"],
                         "alibi_gelu": ["--position-embedding-type", "alibi"]}}
    spec = tmp_path / "grid.json"
    spec.write_text(json.dumps(grid))
    out_dir = tmp_path / "abl"
    out = run([sys.executable, "tools/ablate.py", "--grid", str(spec), "--output", str(out_dir)],
              timeout=600)
    assert "wrote" in out.stdout
    rows = list(csv.DictReader(open(out_dir / "results.csv")))
    assert [r["run"] for r in rows] == ["learned_gelu", "rope_swiglu", "alibi_gelu"]
    flops = [float(r["realised_flops"]) for r in rows]
    for r, f in zip(rows, flops):
        assert r["status"] == "ok", r
        assert abs(f / 3e9 - 1) <= 0.02 and abs(float(r["budget_error_pct"])) <= 2.0
        assert float(r["steps"]) * 8 * 32 * float(r["flops_per_token"]) == pytest.approx(f)
        assert math.isfinite(float(r["val_loss"])) and float(r["val_loss"]) < math.log(512)
        assert math.isfinite(float(r["val_bpb"])) and float(r["val_bpb"]) > 0
        log = (out_dir / r["run"] / "train.log").read_text()
        assert f"iteration {r['steps']}/{r['steps']}" in log  # trained exactly the sized steps
        assert "--train-iters 999" not in (out_dir / r["run"] / "command.txt").read_text()
    assert max(flops) / min(flops) - 1 <= 0.02
    # variants really differ in cost per token: learned positions and swiglu's third matrix
    fpt = {r["run"]: float(r["flops_per_token"]) for r in rows}
    assert fpt["rope_swiglu"] > fpt["learned_gelu"] > fpt["alibi_gelu"]
    assert len({r["steps"] for r in rows}) > 1
    md = (out_dir / "results.md").read_text()
    assert md.startswith("| run |") and all(r["run"] in md for r in rows)
    for png in ("loss_vs_tokens.png", "final_scores.png"):
        assert (out_dir / png).stat().st_size > 5000
    fit = run([sys.executable, "tools/scaling_fit.py", "--input", str(out_dir / "results.csv"),
               "--form", "n", "--bootstrap", "5"])
    assert "3 runs" in fit.stdout

    # Scores of the final checkpoints, as after SLURM jobs: --collect-only with --bpb-input
    # (tools/eval_perplexity.py on held-out text) and --eval-tasks (lm-eval, the shipped tiny
    # tasks) on one run of the grid (a grid file naming that variant), then a plain
    # --collect-only of the whole grid keeps its scores.
    one = dict(grid, variants={"rope_swiglu": grid["variants"]["rope_swiglu"]})
    (tmp_path / "one.json").write_text(json.dumps(one))
    heldout = "tests/fixtures/eval_tasks/tiny_ppl.jsonl"
    out = run([sys.executable, "tools/ablate.py", "--grid", str(tmp_path / "one.json"),
               "--output", str(out_dir), "--collect-only", "--bpb-input", heldout,
               "--eval-tasks", "tiny_mc,tiny_ppl", "--eval-include-path",
               "tests/fixtures/eval_tasks", "--eval-limit", "4"], timeout=300)
    assert "rope_swiglu: lm-eval tiny_mc,tiny_ppl" in out.stdout
    scored = ["tiny_mc/acc", "tiny_mc/acc_norm", "tiny_ppl/bits_per_byte",
              "tiny_ppl/word_perplexity"]
    row, = csv.DictReader(open(out_dir / "results.csv"))
    assert row["run"] == "rope_swiglu" and row["status"] == "collected", row
    assert row["bpb_method"] == f"eval_perplexity {heldout}"
    bpb = json.loads((out_dir / "rope_swiglu" / "bpb.json").read_text())
    assert float(row["val_bpb"]) == pytest.approx(bpb["bits_per_byte"]) and bpb["documents"] == 3
    for col in scored + ["val_bpb"]:
        assert math.isfinite(float(row[col])) and float(row[col]) > 0, col
    assert 0 <= float(row["tiny_mc/acc"]) <= 1
    header, _, values = (out_dir / "results.md").read_text().splitlines()
    cells = dict(zip(header.strip("| ").split(" | "), values.strip("| ").split(" | ")))
    for col in scored + ["val_bpb"]:
        assert math.isfinite(float(cells[col])), (col, cells)
    out = run([sys.executable, "tools/ablate.py", "--grid", str(spec), "--output", str(out_dir),
               "--collect-only"])
    assert "lm-eval" not in out.stdout  # nothing evaluated again
    again = {r["run"]: r for r in csv.DictReader(open(out_dir / "results.csv"))}
    assert list(again) == ["learned_gelu", "rope_swiglu", "alibi_gelu"]
    assert {c: again["rope_swiglu"][c] for c in scored} == {c: row[c] for c in scored}
    assert again["learned_gelu"]["bpb_method"] == "val_loss x tokens/byte"
    assert again["learned_gelu"]["tiny_mc/acc"] == ""


def test_budget_that_rounds_badly_is_refused(tmp_path):
    """1.5 steps' worth of FLOPs cannot be met within 2% in whole steps: a clear error."""
    out = run([sys.executable, "tools/ablate.py", "--output", str(tmp_path / "x"),
               "--budget-flops", "1e8", "--launcher", "none", "--", *TINY, *MOCK], check=False)
    assert out.returncode != 0
    assert "misses the budget" in out.stderr and "Raise the budget" in out.stderr


def test_tokens_and_gpu_hour_budgets_and_vary_cross_product(tmp_path):
    out = run([sys.executable, "tools/ablate.py", "--output", str(tmp_path / "t"),
               "--budget-tokens", "10240", "--launcher", "none",
               "--vary", "position-embedding-type=learned:learned_absolute,rope,alibi",
               "--vary", "glu-activation=gelu:default,swiglu", "--", *TINY, *MOCK])
    plan = json.loads((tmp_path / "t" / "plan.json").read_text())
    assert len(plan) == 6 and {p["name"] for p in plan} >= {"learned_gelu", "alibi_swiglu"}
    assert {p["tokens"] for p in plan} == {10240} and {p["steps"] for p in plan} == {40}
    swiglu = next(p for p in plan if p["name"] == "rope_swiglu")["flags"]
    assert swiglu[-6:] == ["--position-embedding-type", "rope", "--glu-activation", "swiglu",
                           "--train-iters", "40"]
    assert "--glu-activation" not in next(p for p in plan if p["name"] == "rope_gelu")["flags"]
    out = run([sys.executable, "tools/ablate.py", "--output", str(tmp_path / "g"),
               "--budget-gpu-hours", "1.6e-6", "--peak-tflops", "1", "--mfu", "0.5",
               "--launcher", "none", "--", *TINY, *MOCK])
    assert "1.6e-06 GPU hours at 1 TFLOP/s peak x 0.5 MFU (assumed) = 2.88e+09 FLOPs" in out.stdout
    plan = json.loads((tmp_path / "g" / "plan.json").read_text())
    assert abs(plan[0]["realised_flops"] / 2.88e9 - 1) <= 0.02


def test_grid_file_axis_of_flag_sets_causal_vs_prefix_lm(tmp_path):
    """A `vary` axis given as a mapping LABEL: [flags] (several flags per value, e.g. prefix-LM
    with loss on targets only) crosses with FLAG=v1,v2 axes; prefix-LM costs the same FLOPs per
    token as causal, so both get the same steps."""
    import yaml
    spec = tmp_path / "grid.yaml"
    spec.write_text(yaml.safe_dump({
        "base": TINY + MOCK, "budget": {"flops": 3e9},
        "vary": ["position-embedding-type=learned:learned_absolute,alibi",
                 {"causal": [], "prefix": ["--prefix-lm", "--loss-on-targets-only"]}]}))
    run([sys.executable, "tools/ablate.py", "--grid", str(spec), "--output", str(tmp_path / "p"),
         "--launcher", "none"])
    plan = {p["name"]: p for p in json.loads((tmp_path / "p" / "plan.json").read_text())}
    assert set(plan) == {"learned_causal", "learned_prefix", "alibi_causal", "alibi_prefix"}
    assert plan["alibi_prefix"]["flags"][-6:-2] == ["--position-embedding-type", "alibi",
                                                    "--prefix-lm", "--loss-on-targets-only"]
    assert "--prefix-lm" not in plan["alibi_causal"]["flags"]
    for pos in ("learned", "alibi"):
        assert plan[f"{pos}_prefix"]["steps"] == plan[f"{pos}_causal"]["steps"]


def test_slurm_launcher_writes_one_sbatch_per_run_with_the_sized_flags(tmp_path):
    """--launcher slurm: OUTPUT/<run>/job.sbatch uses examples/slurm/common.sh (gpt3d_train),
    carries the #SBATCH options, and passes exactly the planned flags (checked by running the
    script with common.sh's GPT3D_PRINT_ARGS=1, which prints the arguments instead of srun)."""
    out_dir = tmp_path / "abl"
    run([sys.executable, "tools/ablate.py", "--output", str(out_dir), "--budget-flops", "3e9",
         "--launcher", "slurm", "--slurm-nodes", "2", "--slurm-gpus-per-node", "8",
         "--slurm-time", "02:00:00", "--slurm-partition", "gpu",
         "--slurm-extra=--account=abl",
         "--variant", "learned=--position-embedding-type learned_absolute",
         "--variant", "alibi=--position-embedding-type alibi", "--", *TINY, *MOCK])
    plan = {p["name"]: p for p in json.loads((out_dir / "plan.json").read_text())}
    assert set(plan) == {"learned", "alibi"}
    for name, p in plan.items():
        job = out_dir / name / "job.sbatch"
        text = job.read_text()
        for line in ("#SBATCH --job-name=abl-" + name, "#SBATCH --nodes=2",
                     "#SBATCH --gpus-per-node=8", "#SBATCH --time=02:00:00",
                     "#SBATCH --partition=gpu", "#SBATCH --account=abl", "#SBATCH --requeue",
                     "#SBATCH --signal=USR1@", "source examples/slurm/common.sh",
                     'gpt3d_train "${ARGS[@]}"'):
            assert line in text, line
        env = dict(os.environ, SLURM_SUBMIT_DIR=str(ROOT), GPT3D_PRINT_ARGS="1")
        printed = subprocess.run(["bash", str(job)], cwd=ROOT, env=env, capture_output=True,
                                 timeout=60, check=True).stdout.decode().split("\0")[:-1]
        assert printed[:len(p["flags"])] == p["flags"]
        assert printed[printed.index("--save") + 1] == str(out_dir / name / "checkpoints")
        assert printed[printed.index("--load") + 1] == str(out_dir / name / "checkpoints")
        assert f"--train-iters {p['steps']}" in " ".join(printed)
