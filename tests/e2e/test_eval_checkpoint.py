"""A real TP = 2 checkpoint from pretrain_gpt.py through every eval tool: merged/split loading,
convert_checkpoint.py, HF export/import, evaluate.py (lm-eval), eval_perplexity.py, generate.py;
a TP 2 x PP 2 one loaded as the same model and evaluated on TP x PP ranks as on one process."""
import json
import math
import os
import sys

import pytest
import torch

from cli_runner import ROOT, pretrain, run

pytestmark = pytest.mark.slow
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
_CACHE = {}


@pytest.fixture(scope="session")
def tp2_ckpt(tiny_data, tmp_path_factory):
    """A checkpoint trained 10 steps at TP = 2 (2 ranks), shared by every test here."""
    if "ck" not in _CACHE:
        ck = tmp_path_factory.mktemp("eval_ckpt") / "ck"
        pretrain(tiny_data, 2, "--tensor-model-parallel-size", "2", "--micro-batch-size", "4",
                 "--global-batch-size", "4", "--train-iters", "10", "--eval-iters", "1",
                 "--eval-interval", "100", "--save", str(ck))
        _CACHE["ck"] = str(ck)
    return _CACHE["ck"]


PP_FLAGS = ("--micro-batch-size", "4", "--global-batch-size", "4", "--train-iters", "4",
            "--eval-iters", "1", "--eval-interval", "100")


@pytest.fixture(scope="session")
def pp_ckpt(tiny_data, tmp_path_factory):
    """4 steps at TP 2 x PP 2 (4 ranks; 2 layers, tied embeddings: one layer per stage)."""
    if "pp" not in _CACHE:
        ck = tmp_path_factory.mktemp("eval_pp_ckpt") / "ck"
        pretrain(tiny_data, 4, *PP_FLAGS, "--tensor-model-parallel-size", "2",
                 "--pipeline-model-parallel-size", "2", "--save", str(ck))
        _CACHE["pp"] = str(ck)
    return _CACHE["pp"]


@pytest.fixture
def tp1_process():
    import torch.distributed as dist
    from megatron.config.schema import ParallelConfig
    from megatron.parallel.layout import destroy_parallel, initialize_parallel
    started = not dist.is_initialized()
    yield initialize_parallel(ParallelConfig())
    if started:
        destroy_parallel()


TOKENS = torch.tensor([[5, 17, 300, 42, 7, 99, 250, 3, 18, 400, 11, 2]])


def _tp2_logits(rank, world_size, ck):
    from megatron.eval.runner import ModelRunner, init_eval_parallel
    runner = ModelRunner.from_checkpoint(ck, init_eval_parallel())
    return runner.logits(TOKENS).numpy()  # gathered over the two vocab shards


def _runner(ck, layout):
    from megatron.eval.runner import ModelRunner
    return ModelRunner.from_checkpoint(ck, layout)


def test_merged_tp1_equals_tp2_and_split_back_is_exact(tp2_ckpt, tp1_process, tmp_path):
    from distributed import run_on_ranks
    from megatron.eval import checkpoint_loader as ckl
    from megatron.eval.runner import build_model
    tp2 = run_on_ranks(_tp2_logits, 2, args=(tp2_ckpt,), timeout=300)[0]
    cfg, full = ckl.load_full_state_dict(tp2_ckpt)
    model = build_model(ckl.eval_model_config(cfg.model), full)
    with torch.no_grad():
        tp1 = model(TOKENS)
    torch.testing.assert_close(tp1, torch.from_numpy(tp2), atol=1e-5, rtol=1e-5)
    tag = ckl.resolve_tag(tp2_ckpt)
    original = ckl.read_shards(tp2_ckpt, tag, cfg.model.num_layers)
    for mine, theirs in zip(ckl.split_state_dict(full, ckl.partition_specs(cfg.model), 2), original):
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[k], v) for k, v in theirs.items() if torch.is_tensor(v))
    # the tool: TP2 -> TP1 -> TP2 gives the original shards
    run([sys.executable, "tools/convert_checkpoint.py", "--load", tp2_ckpt, "--save",
         str(tmp_path / "tp1"), "--target-tp", "1"])
    run([sys.executable, "tools/convert_checkpoint.py", "--load", str(tmp_path / "tp1"), "--save",
         str(tmp_path / "tp2"), "--target-tp", "2"])
    again = ckl.read_shards(str(tmp_path / "tp2"), tag, cfg.model.num_layers)
    for mine, theirs in zip(again, original):
        assert all(torch.equal(mine[k], v) for k, v in theirs.items() if torch.is_tensor(v))
    bad = run([sys.executable, "tools/convert_checkpoint.py", "--load", str(tmp_path / "nope"),
               "--save", str(tmp_path / "x"), "--target-tp", "1"], check=False)
    assert bad.returncode != 0 and f"--load {tmp_path / 'nope'}: no such checkpoint" in bad.stderr


def test_hf_export_matches_logits_and_import_export_round_trips(tp2_ckpt, tiny_data, tp1_process,
                                                                 tmp_path):
    import sentencepiece as spm
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    hf = tmp_path / "hf"
    run([sys.executable, "tools/convert_hf.py", "export", "--load", tp2_ckpt, "--out", str(hf)],
        env=OFFLINE)
    assert json.loads((hf / "config.json").read_text())["model_type"] == "gpt2"
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = model(TOKENS).logits
    ours = _runner(tp2_ckpt, tp1_process).logits(TOKENS)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
    tok, sp = AutoTokenizer.from_pretrained(hf), spm.SentencePieceProcessor(model_file=tiny_data["spm"])
    for text in ("Return the number of items.", "  def f(x):\n\treturn x  ", "ünïcode 123"):
        assert tok.encode(text, add_special_tokens=False) == sp.encode(text)
    run([sys.executable, "tools/convert_hf.py", "import", "--hf-dir", str(hf), "--save",
         str(tmp_path / "imported"), "--target-tp", "2"], env=OFFLINE)
    run([sys.executable, "tools/convert_hf.py", "export", "--load", str(tmp_path / "imported"),
         "--out", str(tmp_path / "hf2"), "--no-tokenizer"], env=OFFLINE)
    a, b = load_file(hf / "model.safetensors"), load_file(tmp_path / "hf2" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the exported model under lm-eval's own "hf" model scores the shipped tasks as our adapter
    common = ["--tasks", "tiny_mc,tiny_ppl", "--num_fewshot", "0", "--batch_size", "4",
              "--include_path", "tests/fixtures/eval_tasks"]
    run([sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
         f"pretrained={hf},dtype=float32", *common, "--output_path", str(tmp_path / "hf_eval")],
        env=OFFLINE)
    run([sys.executable, "-m", "megatron.eval.lm_eval_cli", "--model", "megatron-gpt",
         "--model_args", f"load={tp2_ckpt}", *common, "--output_path", str(tmp_path / "our_eval")],
        env=OFFLINE)
    [theirs], [ours] = (list((tmp_path / d).rglob("results_*.json")) for d in ("hf_eval", "our_eval"))
    theirs, ours = (json.loads(f.read_text())["results"] for f in (theirs, ours))
    for task, metric in (("tiny_mc", "acc,none"), ("tiny_mc", "acc_norm,none"),
                         ("tiny_ppl", "bits_per_byte,none"), ("tiny_ppl", "word_perplexity,none")):
        assert theirs[task][metric] == pytest.approx(ours[task][metric], rel=1e-4), (task, metric)


def _by_hand_loglik(runner, tok, context, continuation):
    ctx = tok.tokenize(context)
    whole = tok.tokenize(context + continuation)
    cont = whole[len(ctx):]
    inp = whole[-(runner.max_length + 1):][:-1]
    lp = torch.log_softmax(runner.logits(torch.tensor([inp]))[0], -1)[-len(cont):]
    return lp.gather(-1, torch.tensor(cont)[:, None]).sum().item()


def test_evaluate_cli_on_local_tasks_equals_by_hand_and_tp2(tp2_ckpt, tiny_data, tp1_process, tmp_path):
    from megatron.data.tokenizers import build_tokenizer
    from megatron.eval.text_perplexity import read_texts, text_perplexity
    tasks = ["tasks/eval_harness/evaluate.py", "--load", tp2_ckpt, "--tasks", "tiny_mc,tiny_ppl",
             "--num-fewshot", "0", "--batch-size", "4", "--include-path", "tests/fixtures/eval_tasks"]
    run([sys.executable, *tasks, "--results-path", str(tmp_path / "r1.json")], env=OFFLINE)
    res = json.loads((tmp_path / "r1.json").read_text())["results"]
    runner = _runner(tp2_ckpt, tp1_process)
    tok = build_tokenizer("SentencePieceTokenizer", tokenizer_model=tiny_data["spm"])
    correct = []
    for line in open(os.path.join(ROOT, "tests/fixtures/eval_tasks/tiny_mc.jsonl")):
        doc = json.loads(line)
        # lm-eval's multiple choice: context "question", continuation " " + choice (target_delimiter)
        scores = [_by_hand_loglik(runner, tok, doc["question"], " " + c) for c in doc["choices"]]
        correct.append(max(range(len(scores)), key=scores.__getitem__) == doc["label"])
    assert res["tiny_mc"]["acc,none"] == pytest.approx(sum(correct) / len(correct))
    texts = read_texts(os.path.join(ROOT, "tests/fixtures/eval_tasks/tiny_ppl.jsonl"))
    st = text_perplexity(runner, tok, texts)  # disjoint windows = lm-eval's rolling windows
    assert res["tiny_ppl"]["bits_per_byte,none"] == pytest.approx(st.bits_per_byte, rel=1e-5)
    assert res["tiny_ppl"]["byte_perplexity,none"] == pytest.approx(2 ** st.bits_per_byte, rel=1e-5)
    # tensor-parallel over 2 ranks: the same numbers
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         *tasks, "--results-path", str(tmp_path / "r2.json")], env=OFFLINE)
    res2 = json.loads((tmp_path / "r2.json").read_text())["results"]
    for task, metric in (("tiny_mc", "acc,none"), ("tiny_mc", "acc_norm,none"),
                         ("tiny_ppl", "bits_per_byte,none"), ("tiny_ppl", "word_perplexity,none")):
        assert res2[task][metric] == pytest.approx(res[task][metric], rel=1e-5)
    bad = run([sys.executable, *tasks[:4], "no_such_task"], env=OFFLINE, check=False)
    assert bad.returncode != 0 and "unknown task(s) ['no_such_task']" in bad.stderr
    # lm-eval's own command line (megatron.eval.lm_eval_cli, the lm-eval-megatron script)
    run([sys.executable, "-m", "megatron.eval.lm_eval_cli", "--model", "megatron-gpt",
         "--model_args", f"load={tp2_ckpt}", "--batch_size", "4", "--tasks", "tiny_mc",
         "--num_fewshot", "0", "--include_path", "tests/fixtures/eval_tasks",
         "--output_path", str(tmp_path / "lm_eval_out")], env=OFFLINE)
    [out] = list((tmp_path / "lm_eval_out").rglob("results_*.json"))
    res3 = json.loads(out.read_text())["results"]
    for metric in ("acc,none", "acc_norm,none"):
        assert res3["tiny_mc"][metric] == pytest.approx(res["tiny_mc"][metric], rel=1e-6)


def test_perplexity_and_generate_cli(tp2_ckpt, tiny_data, tp1_process, tmp_path):
    from megatron.data.tokenizers import build_tokenizer
    from megatron.eval.generation import generate
    from megatron.eval.text_perplexity import read_texts, text_perplexity
    data = os.path.join(ROOT, "tests/fixtures/eval_tasks/tiny_ppl.jsonl")
    out = run([sys.executable, "tools/eval_perplexity.py", "--load", tp2_ckpt, "--input", data,
               "--stride", "8"])
    got = json.loads(out.stdout.strip().splitlines()[-1])
    runner = _runner(tp2_ckpt, tp1_process)
    tok = build_tokenizer("SentencePieceTokenizer", tokenizer_model=tiny_data["spm"])
    st = text_perplexity(runner, tok, read_texts(data), stride=8)
    assert got["nll"] == pytest.approx(st.nll, rel=1e-6) and got["tokens"] == st.tokens
    assert got["bits_per_byte"] == pytest.approx(st.nll / (math.log(2) * got["bytes"]), rel=1e-9)
    out = run([sys.executable, "tools/eval_perplexity.py", "--load", tp2_ckpt, "--input",
               tiny_data["prefix"], "--max-documents", "2", "--stride", "16"])
    assert json.loads(out.stdout.strip().splitlines()[-1])["documents"] == 2
    prompt = "Return the number of"
    out = run([sys.executable, "tools/generate.py", "--load", tp2_ckpt, "--prompt", prompt,
               "--max-new-tokens", "20", "--json"])
    gen = json.loads(out.stdout.strip().splitlines()[-1])
    want = generate(runner, tok.tokenize(prompt), 20, stop_ids=[tok.eod], vocab_limit=tok.vocab_size)[0]
    assert gen["tokens"] == want
    out = run([sys.executable, "tools/generate.py", "--load", tp2_ckpt, "--prompt", prompt,
               "--max-new-tokens", "20", "--json", "--temperature", "0.9", "--top-p", "0.9",
               "--seed", "5"])
    again = run([sys.executable, "tools/generate.py", "--load", tp2_ckpt, "--prompt", prompt,
                 "--max-new-tokens", "20", "--json", "--temperature", "0.9", "--top-p", "0.9",
                 "--seed", "5"])
    assert out.stdout == again.stdout


def test_pipeline_checkpoint_loads_as_the_same_model_as_a_single_process_one(tiny_data, pp_ckpt,
                                                                              tp1_process,
                                                                              tmp_path):
    """The same 4 steps at TP 2 x PP 2 (4 ranks) and on 1 process (fp32): the evaluation
    loader reads both (pipeline layer files, tied projection on the last stage) into the same
    weights, within the two runs' float-sum noise."""
    from megatron.eval import checkpoint_loader as ckl
    pretrain(tiny_data, 1, *PP_FLAGS, "--save", str(tmp_path / "single"))
    _, pp = ckl.load_full_state_dict(pp_ckpt)
    _, single = ckl.load_full_state_dict(str(tmp_path / "single"))
    assert pp.keys() == single.keys()
    # Adam's normalised steps turn float-sum noise in near-zero gradients into differences
    # of ~2e-6 here; a misplaced layer would differ by the weights' size (std 0.02)
    for name, ref in single.items():
        if torch.is_tensor(ref) and ref.is_floating_point():
            assert pp[name].shape == ref.shape, name
            assert (pp[name] - ref).abs().max() <= 1e-4, name


def test_pipeline_checkpoint_evaluated_at_tp2_pp2_equals_one_process(pp_ckpt, tmp_path):
    """evaluate.py on 4 ranks (--tensor-model-parallel-size 2 --pipeline-model-parallel-size 2,
    the checkpoint's own layout: each rank reads its stage's layer files) and generate.py on
    2 ranks (TP 1 x PP 2: TP shards merged) give the single-process scores and tokens; a layout
    that does not match the processes is refused naming the flags."""
    tp_pp = ("--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2")
    tasks = ["tasks/eval_harness/evaluate.py", "--load", pp_ckpt, "--tasks", "tiny_mc,tiny_ppl",
             "--num-fewshot", "0", "--batch-size", "4", "--include-path", "tests/fixtures/eval_tasks"]
    run([sys.executable, *tasks, "--results-path", str(tmp_path / "r1.json")], env=OFFLINE)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
         *tasks, *tp_pp, "--results-path", str(tmp_path / "r4.json")], env=OFFLINE)
    res = json.loads((tmp_path / "r1.json").read_text())["results"]
    res4 = json.loads((tmp_path / "r4.json").read_text())["results"]
    for task, metric in (("tiny_mc", "acc,none"), ("tiny_mc", "acc_norm,none"),
                         ("tiny_ppl", "bits_per_byte,none"), ("tiny_ppl", "word_perplexity,none")):
        assert res4[task][metric] == pytest.approx(res[task][metric], rel=1e-6), (task, metric)
    gen = ["tools/generate.py", "--load", pp_ckpt, "--prompt", "Return the number of",
           "--max-new-tokens", "12", "--json"]
    one = run([sys.executable, *gen]).stdout.strip().splitlines()[-1]
    two = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               *gen, "--pipeline-model-parallel-size", "2"]).stdout.strip().splitlines()[-1]
    assert json.loads(two)["tokens"] == json.loads(one)["tokens"]
    bad = run([sys.executable, "tools/eval_perplexity.py", "--load", pp_ckpt, "--input",
               os.path.join(ROOT, "tests/fixtures/eval_tasks/tiny_ppl.jsonl"), *tp_pp], check=False)
    assert bad.returncode != 0 and ("--tensor-model-parallel-size 2 x "
                                    "--pipeline-model-parallel-size 2 = 4 ranks, but 1") in bad.stderr
