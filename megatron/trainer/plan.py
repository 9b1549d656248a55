"""Memory and throughput plan of a layout, without building the model (tools/plan.py, --dry-run).

Parameters: each pipeline stage's share of the pipeline specs [embedding, N layers, (tied output
projection), head] from `--pp-partition-method` (DeepSpeed's partitioners, as the pipeline module
uses them); a TP rank holds 1/TP of every matrix and all norms and row-parallel biases.

Memory per GPU (bytes, largest stage), P = this rank's parameters, D = data-parallel size:
  weights       2 P (bf16/fp16) or 4 P (fp32)
  gradients     2 P in the param dtype; bf16 at ZeRO-0/1 (DeepSpeed's BF16_Optimizer, fp32 grad
                accumulation) adds a 4 P fp32 buffer; ZeRO-2: (2 + 4) P / D; fp32: 4 P (ZeRO-2 / D)
  optimizer     Adam m and v in fp32, 8 P, plus fp32 master weights 4 P with bf16/fp16; divided by
                D at ZeRO >= 1, and for bf16 at ZeRO-0 too (BF16_Optimizer shards them itself)
  activations   Korthikanti et al. 2022 per layer and micro-batch (16-bit, no sequence parallel):
                s b h (10 + 24/t) with the MLP's 16 generalised to (2 f_up + 2 f) / h for GLU, plus
                5 a s^2 b / t for eager attention (flash/SDPA keep no s^2 scores; an ALiBi bias of
                a/t s^2 x 2 bytes is added once); dropout masks (s b h per layer) only with dropout.
                With activation checkpointing a layer keeps only its input (2 s b h) and one layer's
                full activations are live during its recompute. Stage i keeps max(2, min(PP - i,
                micro-batches)) micro-batches in flight (DeepSpeed's 1F1B buffers); the last stage
                adds the loss's fp32 softmax and the bf16 logits gradient (6 b s V / t).
Checkpoint: 2 (bf16) + 12 (fp32 master, m, v) bytes per parameter held, tied copies included.
Time: model FLOPs per step = (6 N + 12 L h s) x tokens (metrics.flops_per_token, what the trainer
logs MFU against); with activation checkpointing the hardware does one more forward of the
layers. Step time = hardware FLOPs / (GPUs x peak x MFU) x (1 + bubble), bubble = (PP - 1) / m
with m micro-batches per step: the given MFU is the fraction of peak reached while computing;
the end-to-end MFU printed (model FLOPs / step time / peak, what the trainer logs) is lower.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from megatron.config.schema import ModelConfig

GIB = 2 ** 30

# name -> (memory GiB, peak dense bf16 TFLOP/s)
GPUS = {"H100-80GB": (80, 989), "H200-141GB": (141, 989), "A100-80GB": (80, 312),
        "A100-40GB": (40, 312), "V100-32GB": (32, 125), "L40S-48GB": (48, 362),
        "MI250X-128GB": (128, 383)}


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    micro_batch: int = 1
    global_batch: int = 1
    zero_stage: int = 1
    precision: str = "bf16"  # bf16|fp16|fp32
    recompute: bool = False  # activation checkpointing
    partition_method: str = "type:transformer"

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def micro_batches(self) -> int:
        return self.global_batch // (self.micro_batch * self.dp)


@dataclass(frozen=True)
class StagePlan:
    stage: int
    specs: tuple  # spec kinds on this stage: "embedding", "layer", "projection", "head"
    params: int  # parameters on one TP rank of this stage
    weights: float  # bytes
    grads: float
    optimizer: float
    activations: float

    @property
    def layers(self) -> int:
        return self.specs.count("layer")

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations


@dataclass(frozen=True)
class Plan:
    model: ModelConfig
    layout: Layout
    parameters: int  # unique parameters of the model
    stages: tuple  # StagePlan per pipeline stage
    checkpoint_bytes: float
    flops_per_step: float  # model FLOPs (fwd + bwd, no recompute)
    hardware_flops_per_step: float
    bubble: float
    step_time: float  # seconds at the given MFU
    tokens_per_second: float
    gpu: str
    mfu: float

    @property
    def peak_stage(self) -> StagePlan:
        return max(self.stages, key=lambda s: s.total)

    @property
    def weights_bytes(self) -> float:
        return self.parameters * (4 if self.layout.precision == "fp32" else 2)

    @property
    def end_to_end_mfu(self) -> float:
        return self.flops_per_step / (self.step_time * self.layout.gpus * GPUS[self.gpu][1] * 1e12)

    def fits(self, usable_fraction: float = 0.9) -> bool:
        return self.peak_stage.total <= usable_fraction * GPUS[self.gpu][0] * GIB


def _norm_params(m: ModelConfig) -> int:
    return (2 if m.normalization == "LayerNorm" else 1) * m.hidden_size


def layer_params(m: ModelConfig, tp: int) -> int:
    """Parameters of one transformer layer on one TP rank."""
    h, f, bias = m.hidden_size, m.ffn_size, int(m.add_bias_linear)
    up = (2 if m.glu_activation else 1) * f
    attn = 3 * h * h // tp + bias * 3 * h // tp + h * h // tp + bias * h
    mlp = h * up // tp + bias * up // tp + f * h // tp + bias * h
    return attn + mlp + (4 if m.sandwich_layernorm else 2) * _norm_params(m)


def embedding_params(m: ModelConfig, tp: int) -> int:
    n = m.vocab_size // tp * m.hidden_size
    if m.position_embedding_type == "learned_absolute":
        n += m.max_positions * m.hidden_size
    return n + (_norm_params(m) if m.embed_layernorm else 0)


def head_params(m: ModelConfig, tp: int, pp: int) -> int:
    """Final norm, plus the output layer when untied. (Tied with PP > 1: see 'projection'.)"""
    n = _norm_params(m)
    if m.untie_embeddings_and_output_weights:
        n += m.vocab_size // tp * m.hidden_size
    return n


def spec_kinds(m: ModelConfig) -> list:
    """The pipeline module's spec list (megatron/trainer/pipeline.py), by kind."""
    tied = not m.untie_embeddings_and_output_weights
    return ["embedding"] + ["layer"] * m.num_layers + (["projection"] if tied else []) + ["head"]


# kind -> class name the pipeline module gives it (what `type:REGEX` matches)
SPEC_CLASS = {"embedding": "EmbeddingPipe", "layer": "TransformerLayerPipe",
              "projection": "EmbeddingPipe", "head": "OutputHeadPipe"}


def partition(m: ModelConfig, pp: int, method: str, tp: int = 1) -> list:
    """Stage boundaries over spec_kinds(m), as DeepSpeed's PipelineModule + GPTPipelineModule
    compute them (the tied projection stays on the head's stage)."""
    kinds = spec_kinds(m)
    if pp == 1:
        return [0, len(kinds)]
    from deepspeed.runtime import utils as ds_utils
    method = method.lower()
    if method == "uniform":
        parts = ds_utils.partition_uniform(num_items=len(kinds), num_parts=pp)
    elif method == "parameters":
        parts = ds_utils.partition_balanced(weights=[_spec_params(m, k, tp, pp) for k in kinds],
                                            num_parts=pp)
    elif method.startswith("type:"):
        regex = method.split(":", 1)[1]
        weights = [1 if re.search(regex, SPEC_CLASS[k], re.IGNORECASE) else 0 for k in kinds]
        parts = ds_utils.partition_balanced(weights=weights, num_parts=pp)
    else:
        raise ValueError(f"--pp-partition-method {method}: use uniform, parameters or type:REGEX")
    parts = [int(p) for p in parts]
    if "projection" in kinds:
        head = len(kinds) - 1
        parts = [head - 1 if p == head else p for p in parts]
    if len(set(parts)) != len(parts):
        raise ValueError(f"--pp-partition-method {method}: a pipeline stage would be empty "
                         f"(boundaries {parts}); use fewer stages or more layers")
    return parts


def _spec_params(m: ModelConfig, kind: str, tp: int, pp: int) -> int:
    if kind == "layer":
        return layer_params(m, tp)
    if kind in ("embedding", "projection"):  # the tied copy is a whole embedding module
        return embedding_params(m, tp)
    return head_params(m, tp, pp)


def layer_activation_bytes(m: ModelConfig, tp: int, b: int, eager_attention: bool) -> float:
    """Bytes one layer keeps for backward per micro-batch of b (16-bit, no sequence parallel)."""
    s, h, a, f = m.seq_length, m.hidden_size, m.num_attention_heads, m.ffn_size
    up = (2 if m.glu_activation else 1) * f
    mlp = (2 * up + 2 * f + (2 * f if m.glu_activation else 0)) / h  # 16 for a 4h GeLU MLP
    masks = (2 if m.hidden_dropout > 0 else 0) + 0  # two residual dropout masks, 1 byte each
    per = s * b * h * (8 + masks + (8 + mlp) / tp)
    if eager_attention:
        per += (4 + (1 if m.attention_dropout > 0 else 0)) * a * s * s * b / tp
    return per


def _eager(m: ModelConfig) -> bool:
    return m.attention_kernel == "eager"


def _bytes_per_param(layout: Layout, dp: int) -> tuple:
    """(weights, grads, optimizer) bytes per parameter held on a rank."""
    z = layout.zero_stage
    if layout.precision == "fp32":
        return 4, (4 / dp if z >= 2 else 4), (8 / dp if z >= 1 else 8)
    if layout.precision == "bf16" and z <= 1:
        # DeepSpeed's BF16_Optimizer (bf16 at ZeRO-0, or ZeRO-1 with fp32 grad accumulation as in
        # ds_configs/*_bf16.json): bf16 grads + an fp32 accumulation buffer; it shards fp32
        # master weights and Adam states over DP itself.
        return 2, 2 + 4, 12 / dp
    if z >= 2:  # bf16/fp16 grads partitioned, plus the fp32 grad of this rank's partition
        return 2, 6 / dp, 12 / dp
    return 2, 2, (12 / dp if z >= 1 else 12)


def plan(m: ModelConfig, layout: Layout, gpu: str = "H100-80GB", mfu: float = 0.45) -> Plan:
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; choose one of {', '.join(GPUS)}")
    if m.vocab_size <= 0:
        raise ValueError("ModelConfig.vocab_size must be the padded vocabulary size")
    tp, pp, dp, b = layout.tp, layout.pp, layout.dp, layout.micro_batch
    kinds = spec_kinds(m)
    parts = partition(m, pp, layout.partition_method, tp)
    w_b, g_b, o_b = _bytes_per_param(layout, dp)
    per_layer = layer_activation_bytes(m, tp, b, _eager(m))
    s, h = m.seq_length, m.hidden_size
    stages = []
    for i in range(pp):
        specs = tuple(kinds[parts[i]:parts[i + 1]])
        if pp == 1:  # GPTModel: one embedding, the head reuses it when tied
            params = embedding_params(m, tp) + m.num_layers * layer_params(m, tp) + \
                head_params(m, tp, pp)
        else:
            params = sum(_spec_params(m, k, tp, pp) for k in specs)
        layers = specs.count("layer")
        in_flight = max(2, min(pp - i, layout.micro_batches)) if pp > 1 else 1
        stored = 2 * s * b * h if layout.recompute else per_layer
        act = in_flight * layers * stored + (per_layer if layout.recompute and layers else 0)
        if m.position_embedding_type == "alibi" and not _eager(m):
            act += 2 * m.num_attention_heads / tp * s * s
        if "head" in specs:
            act += 6 * b * s * m.vocab_size / tp
        stages.append(StagePlan(i, specs, params, w_b * params, g_b * params, o_b * params, act))
    from megatron.trainer.metrics import count_parameters, flops_per_token
    n = count_parameters(m)
    held = sum(st.params for st in stages) * tp - (tp - 1) * _replicated_params(m, pp)
    tokens = layout.global_batch * s
    flops = flops_per_token(m) * tokens
    layer_flops = (2 * m.num_layers * layer_params(m, 1) + 4 * m.num_layers * h * s) * tokens
    hw_flops = flops + (layer_flops if layout.recompute else 0)
    bubble = (pp - 1) / layout.micro_batches
    step = hw_flops / (layout.gpus * GPUS[gpu][1] * 1e12 * mfu) * (1 + bubble)
    return Plan(m, layout, n, tuple(stages), 14 * held, flops, hw_flops, bubble, step,
                tokens / step, gpu, mfu)


def _replicated_params(m: ModelConfig, pp: int) -> int:
    """Parameters every TP rank holds a full copy of (norms, row-parallel biases, positions)."""
    per_layer = (4 if m.sandwich_layernorm else 2) * _norm_params(m) + 2 * int(
        m.add_bias_linear) * m.hidden_size
    n = m.num_layers * per_layer + _norm_params(m)
    emb = (m.max_positions * m.hidden_size if m.position_embedding_type == "learned_absolute"
           else 0) + (_norm_params(m) if m.embed_layernorm else 0)
    tied_copies = 2 if pp > 1 and not m.untie_embeddings_and_output_weights else 1
    return n + tied_copies * emb


def suggest(m: ModelConfig, gpus: int, global_batch: int, gpu: str = "H100-80GB",
            mfu: float = 0.45, zero_stages=(0, 1, 2), precision: str = "bf16",
            recompute_options=(False, True), gpus_per_node: int = 8, usable: float = 0.9,
            top: int = 10) -> list:
    """Layouts of `gpus` GPUs that fit, fastest first (TP within a node)."""
    found = []
    for tp in (t for t in (1, 2, 4, 8) if t <= gpus_per_node and gpus % t == 0):
        if m.num_attention_heads % tp or m.ffn_size % tp or m.vocab_size % tp:
            continue
        for pp in (p for p in range(1, m.num_layers + 1) if (gpus // tp) % p == 0):
            dp = gpus // (tp * pp)
            for mb in (1, 2, 4, 8):
                if global_batch % (mb * dp):
                    continue
                for z in zero_stages:
                    for rc in recompute_options:
                        layout = Layout(tp, pp, dp, mb, global_batch, z, precision, rc,
                                        "type:transformer|embedding" if pp > 1 else
                                        "type:transformer")
                        try:
                            p = plan(m, layout, gpu, mfu)
                        except ValueError:
                            continue
                        if p.fits(usable):
                            found.append(p)
    # No communication model: at equal compute time, fewer model-parallel ranks first.
    found.sort(key=lambda p: (round(p.step_time, 6), p.layout.tp * p.layout.pp,
                              p.peak_stage.total))
    return found[:top]


def with_vocab(m: ModelConfig, vocab: int, tp: int = 1) -> ModelConfig:
    """m with the padded vocabulary Megatron would use for a tokenizer of `vocab` pieces."""
    if m.pad_vocab_size_to:
        return dataclasses.replace(m, vocab_size=m.pad_vocab_size_to)
    mult = m.make_vocab_size_divisible_by * tp
    return dataclasses.replace(m, vocab_size=-(-vocab // mult) * mult)


def format_plan(p: Plan) -> str:
    """The figures tools/plan.py and --dry-run print."""
    L, m = p.layout, p.model
    g = GPUS[p.gpu]
    lines = [
        f"model: {m.num_layers} layers, hidden {m.hidden_size}, {m.num_attention_heads} heads, "
        f"ffn {m.ffn_size}, seq {m.seq_length}, vocab {m.vocab_size}: {p.parameters:,} "
        f"parameters ({p.parameters / 1e9:.2f} B)",
        f"layout: TP{L.tp} x PP{L.pp} x DP{L.dp} = {L.gpus} GPUs ({p.gpu}, {g[0]} GiB); micro "
        f"batch {L.micro_batch}, global batch {L.global_batch} ({L.micro_batches} micro-batches "
        f"per step); ZeRO-{L.zero_stage}, {L.precision}, activation checkpointing "
        f"{'on' if L.recompute else 'off'}, partition {L.partition_method}",
        f"weights: {p.weights_bytes / GIB:,.1f} GiB in {L.precision}; checkpoint with optimizer "
        f"states: {p.checkpoint_bytes / 2**40:,.2f} TiB ({p.checkpoint_bytes / 1e12:,.2f} TB)",
        "stage  specs                         params/GPU   weights   grads   optim   activ   "
        "total GiB",
    ]
    for st in p.stages:
        desc = f"{st.layers} layers" + "".join(f" +{k}" for k in ("embedding", "projection",
                                                                 "head") if k in st.specs)
        lines.append(f"{st.stage:5d}  {desc:28s} {st.params:13,d} {st.weights / GIB:9.2f} "
                     f"{st.grads / GIB:7.2f} {st.optimizer / GIB:7.2f} "
                     f"{st.activations / GIB:7.2f} {st.total / GIB:9.2f}")
    peak = p.peak_stage
    lines += [
        f"peak memory per GPU: {peak.total / GIB:.1f} GiB (stage {peak.stage}) of {g[0]} GiB: "
        f"{'fits' if p.fits() else 'does NOT fit'} (90% usable)",
        f"pipeline bubble: {p.bubble:.1%} of compute ((PP-1)/micro-batches)",
        f"FLOPs per step: {p.flops_per_step:.3e} model, {p.hardware_flops_per_step:.3e} "
        f"hardware",
        f"expected step time at {p.mfu:.0%} of peak while busy: {p.step_time:.2f} s; "
        f"{p.tokens_per_second:,.0f} tokens/s; end-to-end MFU {p.end_to_end_mfu:.1%}",
    ]
    return "\n".join(lines)


def layout_from_config(cfg, world_size: int) -> Layout:
    """The Layout a run of `cfg` (a Config) on `world_size` GPUs would use."""
    import json
    import os
    from megatron.config.validate import data_parallel_size, global_batch_size, zero_stage
    t, par = cfg.training, cfg.parallel
    ds = {}
    if t.zero_stage is None and t.deepspeed_config and os.path.isfile(t.deepspeed_config):
        with open(t.deepspeed_config) as f:
            ds = json.load(f)
    return Layout(par.tensor_model_parallel_size, par.pipeline_model_parallel_size,
                  data_parallel_size(cfg, world_size), t.micro_batch_size,
                  global_batch_size(cfg, world_size),
                  zero_stage(cfg, ds), t.precision,
                  t.checkpoint_activations, par.pp_partition_method)
