"""tools/plan.py's model (megatron/trainer/plan.py): published BLOOM-176B sizes, the pipeline
partition, memory recorded on a GPU in docs/benchmarks.md, and the CLI."""
import dataclasses
import subprocess
import sys

import pytest

from megatron.config.schema import ModelConfig
from megatron.trainer.metrics import count_parameters
from megatron.trainer.plan import GIB, Layout, plan, suggest

BLOOM = ModelConfig(num_layers=70, hidden_size=14336, num_attention_heads=112, seq_length=2048,
                    vocab_size=250880, position_embedding_type="alibi", embed_layernorm=True)
BLOOM_LAYOUT = Layout(tp=4, pp=12, dp=8, micro_batch=2, global_batch=2048, zero_stage=0,
                      precision="bf16", recompute=True,
                      partition_method="type:transformer|embedding")


def test_bloom_176b_reproduces_published_sizes():
    p = plan(BLOOM, BLOOM_LAYOUT, "A100-80GB")
    assert p.parameters == 176_247_271_424  # BLOOM's model card
    assert p.weights_bytes / GIB == pytest.approx(329, rel=0.01)  # "329GB" of bf16 weights
    assert p.checkpoint_bytes / 2**40 == pytest.approx(2.3, rel=0.05)  # "2.3TB" with optimizer
    assert p.fits() and p.peak_stage.total / GIB < 80


def test_bloom_partition_puts_embeddings_on_the_end_stages():
    p = plan(BLOOM, BLOOM_LAYOUT, "A100-80GB")
    assert [s.layers for s in p.stages] == [5] + [6] * 10 + [5]
    assert "embedding" in p.stages[0].specs and p.stages[-1].specs[-2:] == ("projection", "head")
    assert sum(s.layers for s in p.stages) == 70


def test_single_stage_parameters_match_the_model_count():
    m = ModelConfig(num_layers=4, hidden_size=64, num_attention_heads=4, vocab_size=512)
    assert plan(m, Layout()).stages[0].params == count_parameters(m)
    # TP shards the matrices: half the parameters minus the replicated norms and biases
    tp2 = plan(m, Layout(tp=2)).stages[0].params
    assert count_parameters(m) / 2 < tp2 < count_parameters(m) / 2 + 4 * 4 * 64 + 64 * 1024


def test_memory_terms_scale_as_documented():
    m = dataclasses.replace(BLOOM, num_layers=8, hidden_size=2048, num_attention_heads=16,
                            vocab_size=512)
    base = Layout(tp=1, pp=1, dp=8, micro_batch=1, global_batch=64, zero_stage=1,
                  precision="fp16")
    z0, z1 = plan(m, dataclasses.replace(base, zero_stage=0)), plan(m, base)
    z2 = plan(m, dataclasses.replace(base, zero_stage=2))
    assert z0.stages[0].optimizer == pytest.approx(8 * z1.stages[0].optimizer)
    assert z2.stages[0].grads < z1.stages[0].grads
    rc = plan(m, dataclasses.replace(base, recompute=True))
    assert rc.stages[0].activations < z1.stages[0].activations / 3
    assert rc.hardware_flops_per_step > rc.flops_per_step == z1.flops_per_step


# (layers, hidden, heads, seq, micro-batch, peak GiB): docs/benchmarks.md, 2026-11-26 H200 run,
# 1 GPU, bf16 + ds_configs/zero1_bf16.json, vocab 50304, dropout 0, learned positions.
MEASURED = [(12, 768, 12, 1024, 16, 11.9), (24, 1024, 16, 2048, 8, 24.3),
            (24, 2048, 16, 2048, 8, 53.9)]


@pytest.mark.parametrize("layers,hidden,heads,seq,mb,measured", MEASURED)
def test_memory_within_10_percent_of_gpu_measurements(layers, hidden, heads, seq, mb, measured):
    m = ModelConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                    seq_length=seq, vocab_size=50304, hidden_dropout=0.0, attention_dropout=0.0)
    p = plan(m, Layout(micro_batch=mb, global_batch=mb, zero_stage=1, precision="bf16"),
             "H200-141GB")
    assert p.peak_stage.total / GIB == pytest.approx(measured, rel=0.10)


def test_suggest_lists_layouts_that_fit():
    found = suggest(BLOOM, 384, 2048, "A100-80GB", zero_stages=(0,), recompute_options=(True,))
    assert found and all(p.fits() and p.layout.gpus == 384 for p in found)
    assert all(p.layout.tp * p.layout.pp > 1 for p in found)  # 176B needs model parallelism


def test_plan_cli_prints_the_figures():
    out = subprocess.run([sys.executable, "tools/plan.py", "--preset", "bloom-176b",
                          "--tensor-model-parallel-size", "4", "--pipeline-model-parallel-size",
                          "12", "--micro-batch-size", "2", "--global-batch-size", "2048",
                          "--world-size", "384", "--gpu", "A100-80GB"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for text in ("176,247,271,424 parameters", "328.3 GiB in bf16", "TP4 x PP12 x DP8",
                 "pipeline bubble: 8.6%", "expected step time", "peak memory per GPU"):
        assert text in out.stdout, out.stdout
