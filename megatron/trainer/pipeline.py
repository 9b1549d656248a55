"""The GPT as a DeepSpeed PipelineModule: the same stage classes as GPTModel, as LayerSpecs.

    torch.manual_seed(seed)                      # as before GPTModel(cfg)
    module = build_pipeline_module(cfg, layout)  # after initialize_parallel(...)

Specs (index: spec), partitioned over the pipeline stages by `--pp-partition-method`:
    0        TiedLayerSpec("embed", EmbeddingPipe)          (tokens, pos, *masks) ->
                                                             (h, pos, *masks)
    1..N     LayerSpec(TransformerLayerPipe, layer_number)  (h, pos, *masks) -> (h, pos, *masks)
    N+1      TiedLayerSpec("embed", forward_fn=_with_word_embedding_weight)   (tied only)
                                                             (h, pos, *masks) -> (h, W)
    last     LayerSpec(OutputHeadPipe)                       (h[, W]) -> logits (B, T, V / TP)
h is (B, T, H) in the params dtype; pos is (B, T) int64; masks is [prefix_lengths (B,)]
[document_ids (B, T)], each int64 and present only when used (--prefix-lm,
--reset-attention-mask), told apart by their number of dims. DeepSpeed sends the int64 tensors
without gradients. The tied "embed" module exists on the first and last stage; DeepSpeed
broadcasts its word embedding from the first stage at start-up and all-reduces its gradient
across the two. Its other parameters (positions, embedding norm) are unused copies on the last
stage.
The loss is GPTModel.loss on (logits, (labels, loss_mask)).

Every spec is built with the default generator in the state GPTModel.__init__ would have at that
module, so a seed gives the same full weights for any PP (and TP) size: each rank draws every
stage's weights once, holding one stage module at a time. Names map to GPTModel's with
`gpt_name`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import deepspeed
import torch
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
from megatron.core import ModelParallelConfig, parallel_state

from megatron.model.embedding import Embedding
from megatron.model.gpt import GPTModel
from megatron.model.head import OutputHead
from megatron.model.layer import TransformerLayer, shared_layer_inputs
from megatron.model.rng import DropoutRNG, checkpointed
from megatron.model.validate import check_model_config
from megatron.parallel.layout import ParallelLayout


def _mask_inputs(rest):
    """(prefix_lengths or None, document_ids or None) from the optional pipeline inputs."""
    prefix_lengths = document_ids = None
    for t in rest:
        if t.dim() == 1:
            prefix_lengths = t
        else:
            document_ids = t
    return prefix_lengths, document_ids


class EmbeddingPipe(Embedding):
    def forward(self, inputs):
        """(tokens, position_ids, *masks) -> (h (B, T, H), position_ids, *masks)."""
        tokens, position_ids, *rest = inputs
        return (super().forward(tokens, position_ids), position_ids, *rest)


class StageInputs:
    """The block mask and rotary tables the layers of one stage share for a micro-batch
    (layer.shared_layer_inputs), made by the stage's first layer and reused by the next ones,
    which receive the same position/mask tensors. Keyed on those tensors' identity, so a
    recomputation (activation checkpointing) of an older micro-batch makes its own."""

    def __init__(self):
        self._key, self._value = (), None

    def get(self, layer, h, position_ids, prefix_lengths, document_ids):
        key = (position_ids, prefix_lengths, document_ids)
        if len(self._key) != 3 or any(a is not b for a, b in zip(key, self._key)):
            self._key = key  # (held: the ids cannot be reused while cached)
            self._value = shared_layer_inputs(layer, h.shape[1], position_ids, prefix_lengths,
                                              document_ids, h.dtype)
        return self._value


class TransformerLayerPipe(TransformerLayer):
    def __init__(self, *args, stage_inputs: Optional[StageInputs] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage_inputs = stage_inputs or StageInputs()
        self._core = super().forward  # the transformer layer itself (compile_core compiles it)

    def compile_core(self, **compile_kwargs) -> None:
        """--torch-compile: compile the layer, not this wrapper (its cache lookup stays eager)."""
        self._core = torch.compile(self._core, **compile_kwargs)

    def forward(self, inputs):
        """(h, position_ids, *masks) -> same, h transformed."""
        h, position_ids, *rest = inputs
        prefix_lengths, document_ids = _mask_inputs(rest)
        block_mask, rotary = self.stage_inputs.get(self, h, position_ids, prefix_lengths,
                                                   document_ids)
        h = self._core(h, position_ids, prefix_lengths, document_ids, block_mask, rotary)
        return (h, position_ids, *rest)


class OutputHeadPipe(OutputHead):
    def forward(self, inputs):
        """(h, word_embedding_weight) when tied, else (h, ...) -> logits (B, T, V / TP)."""
        return super().forward(inputs[0], inputs[1] if self.tied else None)


def _with_word_embedding_weight(embedding: Embedding, inputs):
    """Tied: hand the embedding's (V / TP, H) shard to the head on the same stage."""
    return inputs[0], embedding.weight


def _loss_fn(logits, labels_and_mask):
    labels, loss_mask = labels_and_mask
    return GPTModel.loss(logits, labels, loss_mask)


def _build_seeded(spec, build):
    """Build with the default generator at the state recorded for this spec."""
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(spec.rng_state)
        return build()


def _seeded(base):
    """A LayerSpec class whose build() replays GPTModel's generator state for its module."""
    class Seeded(base):
        rng_state: Optional[torch.Tensor] = None

        def build(self, log=False):
            return _build_seeded(self, functools.partial(super().build, log))
    Seeded.__name__ = f"Seeded{base.__name__}"
    return Seeded


class GPTPipelineModule(PipelineModule):
    """Keeps the tied projection (spec N+1) on the head's stage: DeepSpeed's partitioners may
    split them, which would send the (V / TP, H) weight between stages."""

    def __init__(self, specs, tied_projection: bool, **kwargs):
        self.head_index, self.tied_projection = len(specs) - 1, tied_projection
        super().__init__(specs, **kwargs)

    def _partition_layers(self, method="uniform"):
        super()._partition_layers(method)
        if self.tied_projection:
            head = self.head_index
            self.parts = [head - 1 if p == head else p for p in self.parts]
            if len(set(self.parts)) != len(self.parts):
                raise ValueError(f"--pp-partition-method {method}: a pipeline stage would be "
                                 f"empty (boundaries {self.parts}); use fewer stages or more "
                                 f"layers")
            stage = self._topo.get_coord(self.global_rank).pipe
            self._set_bounds(start=self.parts[stage], stop=self.parts[stage + 1])


def deepspeed_topology(layout: ParallelLayout):
    """DeepSpeed's topology for the layout, checked to give every rank the same (pp, dp, tp)."""
    topo = PipeModelDataParallelTopology(num_pp=layout.pp, num_mp=layout.tp, num_dp=layout.dp)
    for rank in range(layout.world_size):
        ours = dataclasses.replace(layout, rank=rank)
        c = topo.get_coord(rank)
        if (c.pipe, c.data, c.model) != (ours.pp_rank, ours.dp_rank, ours.tp_rank):
            raise RuntimeError(f"rank {rank}: DeepSpeed topology (pipe, data, model) "
                               f"{(c.pipe, c.data, c.model)} differs from the layout's (pp, dp, "
                               f"tp) {(ours.pp_rank, ours.dp_rank, ours.tp_rank)}")
    if layout.rank == 0:
        print(f"DeepSpeed topology {topo.get_axis_names()} {topo.dims} matches layout "
              f"TP{layout.tp} x PP{layout.pp} x DP{layout.dp}", flush=True)
    return topo


def build_pipeline_module(cfg, layout: ParallelLayout, params_dtype=torch.float32,
                          checkpoint_activations: bool = False):
    """cfg: the run's Config. Returns the PipelineModule holding this rank's stage."""
    # PipelineModule talks through deepspeed.comm, which deepspeed.initialize would set up later.
    deepspeed.init_distributed(dist_init_required=False, auto_mpi_discovery=False, verbose=False)
    m = cfg.model
    tp = parallel_state.get_tensor_model_parallel_world_size()
    check_model_config(m, tp)
    mp_config = ModelParallelConfig(tensor_model_parallel_size=tp, params_dtype=params_dtype,
                                    use_cpu_initialization=True, perform_initialization=True)
    rng = DropoutRNG(torch.initial_seed(), parallel_state.get_tensor_model_parallel_rank())
    tied = not m.untie_embeddings_and_output_weights
    Spec, Tied = _seeded(LayerSpec), _seeded(TiedLayerSpec)

    embed = Tied("embed", EmbeddingPipe, m, mp_config, rng, params_dtype,
                 tied_weight_attr="word_embeddings.weight")
    stage_inputs = StageInputs()  # shared by this rank's layers (one stage)
    layers = [Spec(TransformerLayerPipe, m, i + 1, mp_config, rng, params_dtype,
                   stage_inputs=stage_inputs) for i in range(m.num_layers)]
    head = Spec(OutputHeadPipe, m, mp_config, params_dtype)
    for spec in [embed, *layers, head]:  # GPTModel.__init__'s order of weight draws
        spec.rng_state = torch.get_rng_state()
        spec.typename(*spec.module_args, **spec.module_kwargs)  # drawn and dropped
    specs = [embed, *layers]
    if tied:
        projection = Tied("embed", EmbeddingPipe, m, mp_config, rng, params_dtype,
                          forward_fn=_with_word_embedding_weight,
                          tied_weight_attr="word_embeddings.weight")
        projection.rng_state = embed.rng_state
        specs.append(projection)
    specs.append(head)

    recompute = functools.partial(_checkpoint_range, rng)
    module = GPTPipelineModule(specs, tied, topology=deepspeed_topology(layout),
                               loss_fn=_loss_fn, partition_method=cfg.parallel.pp_partition_method,
                               activation_checkpoint_interval=1 if checkpoint_activations else 0,
                               activation_checkpoint_func=recompute,
                               checkpointable_layers=["TransformerLayerPipe"])
    module.rng = rng  # the stage's dropout streams, saved and restored with checkpoints
    return module


def _checkpoint_range(rng, fn, *inputs):
    """DeepSpeed's activation_checkpoint_func: its default (deepspeed.checkpointing) restores
    CUDA generators only, not the CPU dropout streams."""
    return checkpointed(fn, rng, *inputs)


def gpt_name(pipe_name: str, num_layers: int) -> str:
    """A PipelineModule parameter/buffer name -> GPTModel's name for it."""
    if pipe_name.startswith("tied_modules.embed."):
        return "embedding." + pipe_name[len("tied_modules.embed."):]
    index, rest = pipe_name.split(".", 1)
    if 1 <= int(index) <= num_layers:
        return f"layers.{int(index) - 1}.{rest}"
    return "head." + rest


def load_gpt_state_dict(module, state_dict: dict, num_layers: int) -> None:
    """Copy a GPTModel state dict (same TP rank) into this rank's stage of the pipeline."""
    mine = module.state_dict()
    module.load_state_dict({k: state_dict[gpt_name(k, num_layers)] for k in mine})
