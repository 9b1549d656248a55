"""lm-evaluation-harness on the model being trained: --eval-harness-tasks every
--eval-harness-interval steps.

    harness = PeriodicHarness(cfg, layout, model, tokenizer)    # checks the task names
    scores = harness.run()     # {"task/metric": value} on global rank 0, {} elsewhere

Global rank 0 drives lm-eval with megatron.eval.harness.MegatronGPTLM over the live model (eval
mode, no dropout, then back to training mode); the other TP ranks of data-parallel replica 0
follow its forward calls (runner.py), the other replicas wait at a barrier. PP 1 only (a pipeline
stage holds no whole forward): start-up refuses the flag otherwise.
"""
from __future__ import annotations

import torch.distributed as dist

from megatron.config.schema import Config
from megatron.parallel.layout import ParallelLayout


class PeriodicHarness:
    def __init__(self, cfg: Config, layout: ParallelLayout, model, tokenizer):
        from lm_eval.tasks import TaskManager
        t = cfg.training
        self.cfg, self.layout, self.model, self.tokenizer = cfg, layout, model, tokenizer
        self.interval = t.eval_harness_interval or t.eval_interval
        self.tasks = [x.strip() for x in t.eval_harness_tasks.split(",") if x.strip()]
        self.task_manager = TaskManager(include_path=t.eval_harness_include_path)
        unknown = [x for x in self.tasks if x not in self.task_manager.all_tasks]
        if unknown:
            raise ValueError(f"--eval-harness-tasks: unknown task(s) {unknown}; see `lm_eval "
                             f"--tasks list` (local YAMLs: --eval-harness-include-path)")

    def due(self, iteration: int) -> bool:
        return iteration % self.interval == 0

    def run(self) -> dict:
        """Scores as {"task/metric": value} (no stderr) on global rank 0; {} on other ranks."""
        from megatron.eval.runner import ModelRunner, drive
        was_training = self.model.training
        self.model.eval()
        scores = {}
        try:
            if self.layout.dp_rank == 0:
                runner = ModelRunner(self.model, self.cfg, self.layout)
                out = drive(runner, lambda: self._evaluate(runner))
                scores = _flatten(out["results"]) if out else {}
        finally:
            self.model.train(was_training)
        dist.barrier()
        return scores

    def _evaluate(self, runner) -> dict:
        import lm_eval

        from megatron.eval.harness import MegatronGPTLM
        t = self.cfg.training
        lm = MegatronGPTLM(runner, self.tokenizer, batch_size=t.eval_harness_batch_size)
        return lm_eval.simple_evaluate(
            model=lm, tasks=self.tasks, num_fewshot=t.eval_harness_num_fewshot,
            limit=t.eval_harness_limit, task_manager=self.task_manager, log_samples=False,
            random_seed=t.seed, numpy_random_seed=t.seed, torch_random_seed=t.seed,
            fewshot_random_seed=t.seed, verbosity="WARNING")


def _flatten(results: dict) -> dict:
    """lm-eval's {"task": {"acc,none": v, "acc_stderr,none": s, ...}} -> {"task/acc": v}."""
    out = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            name = key.split(",")[0]
            if isinstance(value, (int, float)) and not name.endswith("_stderr"):
                out[f"{task}/{name}"] = float(value)
    return out
