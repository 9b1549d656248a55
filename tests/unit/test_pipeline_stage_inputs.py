"""Pipeline stages share one block mask / rotary tables per micro-batch across their layers (as
GPTModel does per forward), and --torch-compile compiles each layer, not the stage wrapper."""
import torch
from torch import nn


def _pipes(n, **model_overrides):
    from megatron.config.schema import ModelConfig
    from megatron.core import ModelParallelConfig
    from megatron.model.rng import DropoutRNG
    from megatron.trainer.pipeline import StageInputs, TransformerLayerPipe
    cfg = ModelConfig(num_layers=n, hidden_size=32, num_attention_heads=4, seq_length=16,
                      vocab_size=64, hidden_dropout=0.0, attention_dropout=0.0,
                      position_embedding_type="rope", **model_overrides)
    mp = ModelParallelConfig(tensor_model_parallel_size=1, use_cpu_initialization=True)
    shared = StageInputs()
    torch.manual_seed(0)
    return cfg, nn.ModuleList(TransformerLayerPipe(cfg, i + 1, mp, DropoutRNG(0, 0), torch.float32,
                                                   stage_inputs=shared) for i in range(n))


def test_stage_layers_make_shared_inputs_once_per_micro_batch(tp1_layout, monkeypatch):
    import megatron.trainer.pipeline as pipeline
    from megatron.model.layer import TransformerLayer
    _, layers = _pipes(3)
    calls = []
    real = pipeline.shared_layer_inputs
    monkeypatch.setattr(pipeline, "shared_layer_inputs",
                        lambda *a: calls.append(1) or real(*a))
    h = torch.randn(2, 16, 32)
    for micro_batch in range(2):
        pos = torch.arange(16).expand(2, 16).clone()  # a new tensor per micro-batch
        x = (h, pos)
        for layer in layers:
            x = layer(x)
        assert len(calls) == micro_batch + 1
    with torch.no_grad():  # the layers making their own tables give the same output
        ref = h
        for layer in layers:
            ref = TransformerLayer.forward(layer, ref, pos)
    torch.testing.assert_close(x[0].detach(), ref, rtol=0, atol=0)


def test_compile_layers_compiles_the_layer_inside_the_stage_wrapper(tp1_layout):
    from megatron.model.compile import compile_layers
    _, layers = _pipes(2)
    h, pos = torch.randn(2, 16, 32), torch.arange(16).expand(2, 16)
    with torch.no_grad():
        eager = layers[1](layers[0]((h, pos)))[0]
        assert compile_layers(layers, backend="aot_eager") == 2
        assert all(layer._compiled_call_impl is None for layer in layers)  # wrapper eager
        assert all(hasattr(layer._core, "_torchdynamo_orig_callable") for layer in layers)
        compiled = layers[1](layers[0]((h, pos)))[0]
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)
