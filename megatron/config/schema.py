"""Typed run configuration: one frozen dataclass per concern, grouped in `Config`.

Built once from CLI flags (see `cli.py`), validated once (see `validate.py`), then passed
explicitly to whoever needs a part of it. Field names follow Megatron-DeepSpeed's flags
(`--num-layers` -> `num_layers`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the GPT: everything needed to build the same weights on any layout."""

    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    # MLP width after the activation (fc2's input). None: 4h, with a GLU too: fc1 then has
    # 2 x ffn outputs (gate and up), as in Megatron-DeepSpeed. --swiglu (Megatron-LM's flag) sets
    # it to Megatron-LM's 8/3 h rounded down to 64 (see cli.py, megatron_lm_swiglu_ffn_size).
    ffn_hidden_size: Optional[int] = None
    seq_length: int = 128
    max_position_embeddings: Optional[int] = None  # None: seq_length
    vocab_size: int = 0  # padded vocabulary size; set from the tokenizer at start-up
    make_vocab_size_divisible_by: int = 128
    pad_vocab_size_to: Optional[int] = None
    position_embedding_type: str = "learned_absolute"  # learned_absolute|sinusoidal|rope|alibi|none
    rotary_percent: float = 1.0
    rotary_base: float = 10000.0
    activation: str = "gelu"  # gelu|gelu_tanh
    glu_activation: Optional[str] = None  # None|geglu|swiglu|reglu|liglu
    normalization: str = "LayerNorm"  # LayerNorm|RMSNorm
    layernorm_epsilon: float = 1e-5
    sandwich_layernorm: bool = False
    embed_layernorm: bool = False
    parallel_attention_mlp: bool = False  # GPT-J / GPT-NeoX parallel residual
    add_bias_linear: bool = True
    untie_embeddings_and_output_weights: bool = False
    init_method_std: float = 0.02
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    attention_softmax_in_fp32: bool = False
    apply_query_key_layer_scaling: bool = False
    attention_kernel: str = "auto"  # auto|eager|sdpa|flex|fa4 (fa4_attention.py)
    sdpa_backend: str = "auto"  # auto|cudnn|flash|efficient|math: SDPA kernel preferred on CUDA
    mlp_kernel: str = "torch"  # torch|quack: quack fuses the activation into the GEMMs (quack_mlp.py)
    prefix_lm: bool = False

    @property
    def max_positions(self) -> int:
        return self.max_position_embeddings or self.seq_length

    @property
    def ffn_size(self) -> int:
        """Megatron-DeepSpeed's rule, GLU or not (bigscience-workshop/Megatron-DeepSpeed,
        megatron/arguments.py: `if args.ffn_hidden_size is None: args.ffn_hidden_size = 4 *
        args.hidden_size`; megatron/model/transformer.py, ParallelMLP: dense_h_to_4h outputs
        `2 * args.ffn_hidden_size if args.glu_activation else args.ffn_hidden_size`), so a
        BigScience argument list with --glu-activation builds the same shapes here."""
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        return 4 * self.hidden_size

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class ParallelConfig:
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    sequence_parallel: bool = False
    pp_partition_method: str = "type:transformer"
    distributed_backend: str = "auto"  # auto: nccl on GPUs, gloo on CPU
    distributed_timeout_minutes: int = 30
    sync_tp_duplicated_parameters: bool = False


@dataclass(frozen=True)
class DataConfig:
    data_path: tuple = ()  # [weight] prefix pairs, Megatron style
    split: str = "969,30,1"
    tokenizer_type: Optional[str] = None
    tokenizer_model: Optional[str] = None
    tokenizer_name_or_path: Optional[str] = None
    vocab_file: Optional[str] = None
    merge_file: Optional[str] = None
    vocab_size: Optional[int] = None  # NullTokenizer's
    data_cache_path: Optional[str] = None
    reset_position_ids: bool = False
    reset_attention_mask: bool = False
    eod_mask_loss: bool = False
    loss_on_targets_only: bool = False
    num_workers: int = 0
    valid_num_workers: Optional[int] = None  # accepted; validation uses num_workers
    data_impl: str = "mmap"
    # BigScience's per-split groups ("NAME: W START:END PREFIX, ..."), see data/weighted_splits
    train_weighted_split_paths: tuple = ()
    valid_weighted_split_paths: tuple = ()
    test_weighted_split_paths: tuple = ()
    train_weighted_split_paths_path: Optional[str] = None
    valid_weighted_split_paths_path: Optional[str] = None
    test_weighted_split_paths_path: Optional[str] = None
    mock_data: bool = False


@dataclass(frozen=True)
class OptimizerConfig:
    optimizer: str = "adam"
    lr: float = 3e-4
    min_lr: float = 0.0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0


@dataclass(frozen=True)
class TrainingConfig:
    micro_batch_size: int = 1
    global_batch_size: Optional[int] = None  # None: micro_batch_size x data-parallel size
    rampup_batch_size: Optional[tuple] = None
    train_iters: Optional[int] = None
    train_samples: Optional[int] = None
    lr_decay_style: str = "cosine"  # constant|linear|cosine|inverse-square-root|WSD
    lr_warmup_iters: int = 0
    lr_warmup_samples: int = 0
    lr_warmup_fraction: Optional[float] = None
    lr_decay_iters: Optional[int] = None
    lr_decay_samples: Optional[int] = None
    lr_decay_tokens: Optional[int] = None
    lr_warmup_tokens: Optional[int] = None
    lr_wsd_decay_samples: Optional[int] = None
    lr_wsd_decay_iters: Optional[int] = None
    lr_wsd_decay_style: str = "exponential"
    seed: int = 1234
    bf16: bool = False
    fp16: bool = False
    checkpoint_activations: bool = False
    recompute_granularity: Optional[str] = None  # full|selective; full = checkpoint_activations
    torch_compile: bool = False
    enable_cuda_graph: bool = False  # CUDA graphs of the layers (megatron/model/cuda_graphs.py)
    manual_gc: bool = False  # Python's garbage collector off while training (trainer/manual_gc.py)
    manual_gc_interval: int = 0  # steps between manual collections; 0: none between steps
    manual_gc_eval: bool = True  # collect before and after each evaluation
    eval_interval: int = 1000
    eval_iters: int = 10
    # lm-evaluation-harness during training (megatron/eval/periodic.py)
    eval_harness_tasks: Optional[str] = None  # comma-separated lm-eval task names
    eval_harness_interval: Optional[int] = None  # None: --eval-interval
    eval_harness_include_path: Optional[str] = None
    eval_harness_limit: Optional[float] = None
    eval_harness_num_fewshot: Optional[int] = None
    eval_harness_batch_size: int = 8
    exit_interval: Optional[int] = None
    exit_duration_in_mins: Optional[float] = None
    kill_switch_path: Optional[str] = None
    skip_train_iteration_range: Optional[tuple] = None  # ("START-END", ...), inclusive
    loss_spike_threshold: Optional[float] = None  # standard deviations; None: off
    loss_spike_window: int = 100
    loss_spike_action: str = "log"  # log|skip|stop
    deepspeed: bool = True
    deepspeed_config: Optional[str] = None
    zero_stage: Optional[int] = None
    bf16_optimizer: str = "auto"  # auto|deepspeed|local (megatron/trainer/master_adamw.py)
    deepspeed_activation_checkpointing: bool = False  # accepted; --checkpoint-activations recomputes
    partition_activations: bool = False
    universal_checkpoint: bool = False
    abort_on_unmet_fused_kernel_constraints: bool = False  # accepted; no fused-kernel fallback
    dry_run: bool = False
    dry_run_world_size: Optional[int] = None
    dry_run_gpu: str = "H100-80GB"

    @property
    def precision(self) -> str:
        """The weights' and activations' dtype: "bf16", "fp16" or "fp32"."""
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"


@dataclass(frozen=True)
class CheckpointConfig:
    save: Optional[str] = None
    load: Optional[str] = None
    save_interval: Optional[int] = None
    no_load_optim: bool = False
    no_load_rng: bool = False


@dataclass(frozen=True)
class LoggingConfig:
    log_interval: int = 100
    tensorboard_dir: Optional[str] = None
    log_params_norm: bool = False
    log_per_layer_grad_norm: bool = False
    # accepted for compatibility, no effect on training:
    log_level: Optional[str] = None
    log_level_replica: Optional[str] = None
    tensorboard_queue_size: Optional[int] = None
    log_timers_to_tensorboard: bool = False
    profile: bool = False
    use_pytorch_profiler: bool = False
    profile_step_start: int = 10
    profile_step_end: int = 12
    profile_ranks: tuple = (0,)
    profile_dir: Optional[str] = None
    log_batch_size_to_tensorboard: bool = False
    log_validation_ppl_to_tensorboard: bool = False
    codecarbon_dir: Optional[str] = None


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Inverse of to_dict (unknown keys are dropped, lists become tuples)."""
        kwargs = {}
        for f in dataclasses.fields(cls):
            sub_cls = f.default_factory
            known = {sf.name for sf in dataclasses.fields(sub_cls)}
            values = d.get(f.name, {})
            kwargs[f.name] = sub_cls(**{k: _tuple_lists(v) for k, v in values.items() if k in known})
        return cls(**kwargs)

    def replace(self, **groups) -> "Config":
        """Copy with some groups' fields changed: cfg.replace(model={"vocab_size": 512})."""
        changed = {k: dataclasses.replace(getattr(self, k), **v) for k, v in groups.items()}
        return dataclasses.replace(self, **changed)


def _tuple_lists(v):
    return tuple(v) if isinstance(v, list) else v
