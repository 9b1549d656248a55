"""On a GPU (skipped without one): generation through the eval runner on CUDA, with the KV cache
(caller's position ids moved to the model's device) and without, equals the argmax of the full
forward at each step."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

T = 16


@pytest.mark.parametrize("pe", ["learned_absolute", "rope", "alibi"])
def test_greedy_generation_on_gpu_with_and_without_cache(pe):
    from megatron.config.schema import Config, ModelConfig, ParallelConfig
    from megatron.eval.generation import generate
    from megatron.eval.runner import ModelRunner
    from megatron.model.gpt import GPTModel
    from megatron.parallel.layout import initialize_parallel

    layout = initialize_parallel(ParallelConfig())
    assert layout.device.type == "cuda"
    torch.manual_seed(3)
    cfg = Config(model=ModelConfig(num_layers=2, hidden_size=64, num_attention_heads=4,
                                   seq_length=T, vocab_size=128, hidden_dropout=0.0,
                                   attention_dropout=0.0, init_method_std=0.5,
                                   position_embedding_type=pe))
    runner = ModelRunner(GPTModel(cfg.model).to(layout.device).eval(), cfg, layout)
    prompt = [5, 9, 2, 33, 17]
    n = 2 * T  # past max_positions too
    cached = generate(runner, prompt, n, use_cache=True)[0]
    plain = generate(runner, prompt, n, use_cache=False)[0]
    assert cached == plain
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            window = torch.tensor([seq[-T:]], device=layout.device)
            seq.append(int(runner.model(window)[0, -1].argmax()))
    assert cached == seq[len(prompt):]
    assert len(set(cached)) > 1
