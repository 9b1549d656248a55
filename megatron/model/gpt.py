"""GPT on megatron-core tensor-parallel layers: Embedding -> TransformerLayer x N -> OutputHead.

    model = GPTModel(cfg, params_dtype=torch.float32)    # after initialize_parallel(...)
    logits = model(tokens, position_ids=None, prefix_lengths=None, document_ids=None)
    loss = model.loss(logits, labels, loss_mask)

Each stage is a module with a plain tensor forward, so pipeline parallelism can wrap the same
modules as DeepSpeed LayerSpecs. Weights are drawn on CPU from torch's default generator as
full master tensors and sliced (megatron-core's use_cpu_initialization), so the same seed gives
the same full model for any TP size. The dropout seed is torch.initial_seed() at construction
(the trainer's torch.manual_seed).
"""
from __future__ import annotations

from typing import Optional

import torch
from megatron.core import ModelParallelConfig, parallel_state
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy
from torch import nn

from megatron.model.embedding import Embedding
from megatron.model.head import OutputHead
from megatron.model.layer import TransformerLayer, shared_layer_inputs
from megatron.model.rng import DropoutRNG, checkpointed
from megatron.model.validate import check_model_config


class GPTModel(nn.Module):
    def __init__(self, cfg, params_dtype: torch.dtype = torch.float32,
                 checkpoint_activations: bool = False):
        super().__init__()
        self.checkpoint_activations = checkpoint_activations  # recompute each layer in backward
        tp = parallel_state.get_tensor_model_parallel_world_size()
        check_model_config(cfg, tp)
        self.cfg = cfg
        mp_config = ModelParallelConfig(tensor_model_parallel_size=tp, params_dtype=params_dtype,
                                        use_cpu_initialization=True, perform_initialization=True)
        self.rng = DropoutRNG(torch.initial_seed(), parallel_state.get_tensor_model_parallel_rank())
        # Creation order (= RNG draw order) is independent of TP.
        self.embedding = Embedding(cfg, mp_config, self.rng, params_dtype)
        self.layers = nn.ModuleList(
            TransformerLayer(cfg, i + 1, mp_config, self.rng, params_dtype)
            for i in range(cfg.num_layers))
        self.head = OutputHead(cfg, mp_config, params_dtype)
        self.layer_graphs = None  # CUDA graphs of the layers (cuda_graphs.py), set from outside

    def forward(self, tokens, position_ids: Optional[torch.Tensor] = None,
                prefix_lengths: Optional[torch.Tensor] = None,
                document_ids: Optional[torch.Tensor] = None):
        """tokens (B, T) -> vocab-parallel logits (B, T, V / TP) in params dtype."""
        B, T = tokens.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=tokens.device).expand(B, T)
        h = self.embedding(tokens, position_ids)  # (B, T, H)
        if self.layer_graphs is not None and self.training and torch.is_grad_enabled():
            _, rotary = shared_layer_inputs(self.layers[0], T, position_ids, prefix_lengths,
                                            document_ids, h.dtype, with_block_mask=False)
            out = self.layer_graphs(h, position_ids, prefix_lengths, document_ids, rotary)
            if out is not None:  # else these inputs do not fit the graphs: run the layers
                return self.head(out, self.embedding.weight if self.head.tied else None)
        block_mask, rotary = shared_layer_inputs(self.layers[0], T, position_ids, prefix_lengths,
                                                 document_ids, h.dtype) \
            if self.layers else (None, None)
        recompute = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:
                h = checkpointed(layer, self.rng, h, position_ids, prefix_lengths, document_ids,
                                 block_mask, rotary)
            else:
                h = layer(h, position_ids, prefix_lengths, document_ids, block_mask, rotary)
        return self.head(h, self.embedding.weight if self.head.tied else None)

    @staticmethod
    def loss(logits, labels, loss_mask):
        """Masked mean of the (vocab-parallel) cross entropy, in fp32."""
        if parallel_state.get_tensor_model_parallel_world_size() == 1:
            losses = _cross_entropy_fp32(logits, labels)  # (B, T)
        else:
            # megatron-core's cross entropy works in place on fp32 input: hand it a copy.
            logits32 = logits.clone() if logits.dtype == torch.float32 else logits.float()
            losses = vocab_parallel_cross_entropy(logits32, labels)  # (B, T)
        mask = loss_mask.float()
        return (losses * mask).sum() / mask.sum().clamp(min=1.0)


@torch.compile(dynamic=False, disable=not torch.cuda.is_available())
def _cross_entropy_fp32(logits, labels):
    """(B, T, V) logits, (B, T) labels -> (B, T) losses. With the whole vocabulary on one rank,
    one fused upcast + log-softmax + NLL (compiled on GPUs) does what megatron-core's
    vocab-parallel version does in several passes over an fp32 copy of the logits."""
    B, T, V = logits.shape
    return torch.nn.functional.cross_entropy(logits.float().view(B * T, V), labels.reshape(-1),
                                             reduction="none").view(B, T)
