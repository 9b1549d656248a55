"""tools/benchmark_nanogpt.py (the same-card nanoGPT baseline) on CPU: the preset's shape goes
into nanoGPT's GPTConfig, its optimizer and model run bench.py's loop, and the result line
reports them. nanoGPT itself is not in this repository: a stand-in model.py with its interface
(GPTConfig, GPT(config)(idx, targets) -> (logits, loss), configure_optimizers) records what the
tool asked of it."""
import json
import sys

from cli_runner import run

STAND_IN = '''
import json, torch
from dataclasses import dataclass, asdict

@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True

class GPT(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        json.dump(asdict(config), open(__file__ + ".config.json", "w"))
        self.emb = torch.nn.Embedding(config.vocab_size, 8)
        self.head = torch.nn.Linear(8, config.vocab_size)
        self.calls = 0

    def forward(self, idx, targets):
        self.calls += 1
        open(__file__ + ".calls", "w").write(str(self.calls))
        logits = self.head(self.emb(idx))
        return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        return torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas,
                                 weight_decay=weight_decay)
'''


def test_runs_nanogpts_interface_on_the_preset_shape(tmp_path):
    (tmp_path / "model.py").write_text(STAND_IN)
    out = run([sys.executable, "tools/benchmark_nanogpt.py", "--nanogpt-dir", str(tmp_path),
               "--preset", "tiny", "--steps", "3", "--warmup", "2", "--no-compile"]).stdout
    config = json.loads((tmp_path / "model.py.config.json").read_text())
    # tools/benchmark.py's tiny preset: 2 layers x 64, 4 heads, seq 128 (micro-batch 4)
    assert config == {"block_size": 128, "vocab_size": 50304, "n_layer": 2, "n_head": 4,
                      "n_embd": 64, "dropout": 0.0, "bias": False}
    assert (tmp_path / "model.py.calls").read_text() == "5"  # 2 untimed + 3 timed steps
    line = out.strip().splitlines()[-1]
    assert line.startswith("nanoGPT tiny (bias False) on cpu: ") and " tokens/s, " in line
    assert float(line.split(": ")[1].split(" tokens/s")[0]) > 0


def test_a_directory_without_model_py_is_refused_by_name(tmp_path):
    out = run([sys.executable, "tools/benchmark_nanogpt.py", "--nanogpt-dir", str(tmp_path)],
              check=False)
    assert out.returncode == 2 and f"--nanogpt-dir {tmp_path}: no model.py there" in out.stderr
