"""lm-evaluation-harness's own command line with our model registered ("megatron-gpt").

    lm-eval-megatron --model megatron-gpt --model_args load=CKPT --batch_size 8 --tasks piqa
    torchrun --nproc-per-node 4 -m megatron.eval.lm_eval_cli --model megatron-gpt \
        --model_args load=CKPT,tensor_model_parallel_size=2,pipeline_model_parallel_size=2 ...

lm-eval 0.4 finds models only in its registry, filled by imports; its `lm_eval` command cannot
import ours. This entry point imports megatron.eval.harness (which registers "megatron-gpt")
and hands every argument to lm-eval's CLI unchanged, so all of its flags and outputs apply.
"""
from __future__ import annotations


def main() -> None:
    import importlib

    from lm_eval.__main__ import cli_evaluate
    importlib.import_module("megatron.eval.harness")  # registers "megatron-gpt"
    cli_evaluate()


if __name__ == "__main__":
    main()
