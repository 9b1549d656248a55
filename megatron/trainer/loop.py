"""The training loop: steps, logging, periodic validation and checkpoints, exit conditions."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from megatron.config.schema import Config
from megatron.config.validate import parse_iteration_ranges
from megatron.data.batch import make_batch
from megatron.eval.perplexity import evaluate_loss
from megatron.parallel.layout import ParallelLayout
from megatron.trainer import checkpoint as ckpt
from megatron.trainer.batch_schedule import batch_size_at
from megatron.trainer.engine import TrainEngine
from megatron.trainer.host_copy import MaxOverRanksLater
from megatron.trainer.manual_gc import ManualGC
from megatron.trainer.metrics import TensorBoard, flops_per_token, format_log_line, peak_flops
from megatron.trainer.profiling import StepProfiler
from megatron.trainer.signals import StopRequest
from megatron.trainer.stability import SpikeDetector

LOSS_SPIKE_EXIT_CODE = 3


@dataclass
class StepRecord:
    """What the loop knew of a step when it started it (its results may come later)."""
    iteration: int  # the iteration this step completes (1-based)
    gbs: int
    t0: float  # perf_counter() when the host began it
    found: list  # the loss spike seen before the update (--loss-spike-action skip)
    consumed_samples: int = 0  # progress after it
    consumed_tokens: int = 0


@dataclass
class TrainData:
    train_loader: object  # yields this rank's micro-batches from consumed samples
    # (name, () -> a fresh loader) per validation / test set; name "" for the --split ones
    valid_loaders: list[tuple[str, Callable]]
    test_loaders: list[tuple[str, Callable]]
    eod: int


def _new_interval() -> dict:
    return {"loss": 0.0, "steps": 0, "samples": 0, "skipped": 0, "time": 0.0}


def print_rank0(layout: ParallelLayout, *msg) -> None:
    if layout.rank == 0:
        print(*msg, flush=True)


class Trainer:
    def __init__(self, cfg: Config, layout: ParallelLayout, engine: TrainEngine, data: TrainData,
                 batch_calculator, total_iters: int, progress: ckpt.Progress, harness=None):
        """harness: a megatron.eval.periodic.PeriodicHarness (--eval-harness-tasks) or None."""
        self.cfg, self.layout, self.engine, self.data = cfg, layout, engine, data
        self.harness, self.last_harness = harness, None
        self.calc, self.total_iters, self.progress = batch_calculator, total_iters, progress
        self.tb = TensorBoard(cfg.logging.tensorboard_dir, layout.rank == 0)
        t = cfg.training
        self.gc = ManualGC(t.manual_gc, t.manual_gc_interval, t.manual_gc_eval)
        if cfg.logging.log_timers_to_tensorboard:
            from megatron.trainer.timers import PhaseTimer
            engine.timer = PhaseTimer(sync=layout.device.type == "cuda")
        lg = cfg.logging
        self.profiler = StepProfiler(
            lg.profile, lg.profile_step_start, lg.profile_step_end, lg.profile_ranks, layout.rank,
            lg.use_pytorch_profiler, lg.profile_dir or lg.tensorboard_dir, layout.device.type)
        self.flops_per_token = flops_per_token(cfg.model)
        self.peak = peak_flops(layout.device)
        self.history: list[dict] = []  # one entry per logged interval, for callers and tests
        self.batch_sizes: list[int] = []  # global batch size of each step run
        self.skip_ranges = parse_iteration_ranges(cfg.training.skip_train_iteration_range)
        t = cfg.training
        self.spikes = SpikeDetector(t.loss_spike_threshold, t.loss_spike_window) \
            if t.loss_spike_threshold else None

    def _prefix_lm_options(self) -> dict:
        """make_batch's prefix-LM keywords (--prefix-lm, --loss-on-targets-only, --seed)."""
        cfg = self.cfg
        return dict(prefix_lm=cfg.model.prefix_lm,
                    loss_on_targets_only=cfg.data.loss_on_targets_only, seed=cfg.training.seed)

    def log(self, *msg) -> None:
        print_rank0(self.layout, *msg)

    def train(self) -> ckpt.Progress:
        """Train to the end (or a stop request / exit condition); returns the progress."""
        self.tb.text("config", f"```\n{self.cfg.to_dict()}\n```")
        stop = StopRequest(self.cfg.training.kill_switch_path)
        self.gc.start()
        try:
            return self._train_steps(stop)
        finally:
            self.gc.stop()
            stop.restore()
            self.tb.close()

    # Queue step N + 1 before reading step N's results (loss, norm, skip) on the host, so that
    # the device never waits for the host between steps; False reads each step's at once.
    overlap_steps = True

    def _train_steps(self, stop: StopRequest) -> ckpt.Progress:
        cfg, p = self.cfg, self.progress
        seq = cfg.model.seq_length
        train_iter = iter(self.data.train_loader)
        start_time = time.monotonic()
        elapsed_minutes = MaxOverRanksLater(self.layout.device)  # every rank exits together
        self._interval, self._last_finished, self._last_observed = _new_interval(), 0.0, 0.0
        last_eval = None
        in_flight = None  # (PendingStep, StepRecord) of a step whose results are not used yet
        ahead = {}  # consumed samples -> the micro-batches read for that step during the last

        def read(consumed: int) -> list:
            """The micro-batches of the step that starts at `consumed` samples."""
            if consumed in ahead:
                return ahead.pop(consumed)
            accum = batch_size_at(self.calc, consumed) // (cfg.training.micro_batch_size *
                                                           self.layout.dp)
            return [make_batch(next(train_iter), self.data.eod, cfg.data.reset_attention_mask,
                               **self._prefix_lm_options()) for _ in range(accum)]

        while p.iteration < self.total_iters:
            t0 = time.perf_counter()
            gbs = batch_size_at(self.calc, p.consumed_samples)
            self.engine.set_global_batch_size(gbs)
            with self.engine.timer("data"):
                micro = read(p.consumed_samples)
            if any(a <= p.iteration + 1 <= b for a, b in self.skip_ranges):
                in_flight = self._finish_step(in_flight)
                self.engine.skip_step(gbs)
                p.advance(gbs, seq)
                self.log(f"iteration {p.iteration} skipped (--skip-train-iteration-range): "
                         f"its {gbs} samples were read, no update")
                continue
            self.profiler.before_step(p.iteration)
            record = StepRecord(p.iteration + 1, gbs, t0, found=[])

            def spike_before_update(loss: float, record=record) -> bool:
                record.found.append(self.spikes.check(record.iteration, loss))
                return record.found[-1] is not None

            def read_ahead() -> None:
                """The next step's batch, read while the device still runs this one."""
                if p.iteration + 1 < self.total_iters:
                    ahead[p.consumed_samples + gbs] = read(p.consumed_samples + gbs)
            pending = self.engine.start_step(
                micro, gbs, layer_grad_norms=cfg.logging.log_per_layer_grad_norm and
                self._logs_at(p.iteration + 1),
                skip_if=spike_before_update if self._spikes_before_update else None,
                before_sync=read_ahead)
            p.advance(gbs, seq)
            record.consumed_samples, record.consumed_tokens = p.consumed_samples, \
                p.consumed_tokens
            self.profiler.after_step(p.iteration)
            if self.profiler.written:
                self.log("profile written: " + ", ".join(map(str, self.profiler.written)))
                self.profiler.written = []
            self.batch_sizes.append(gbs)
            self.gc.after_step(p.iteration)
            in_flight = self._finish_step(in_flight)  # the previous step's results
            in_flight = (pending, record)
            eval_due = bool(cfg.training.eval_interval and
                            p.iteration % cfg.training.eval_interval == 0)
            harness_due = bool(self.harness and self.harness.due(p.iteration))
            save_due = self._should_save_now()
            stopping = stop.requested(self.layout.device)
            exiting = not stopping and self._should_exit(start_time, elapsed_minutes)
            if (not self.overlap_steps or eval_due or harness_due or save_due or stopping or
                    exiting or p.iteration == self.total_iters or
                    (cfg.logging.log_params_norm and self._logs_at(p.iteration))):
                in_flight = self._finish_step(in_flight)  # what follows needs this step done
            if eval_due:
                last_eval = self.evaluate("validation")
            if harness_due:
                self.evaluate_harness()
            if save_due:
                self.save()
            if stopping:
                self.log(f"stopping at iteration {p.iteration}: {stop.reason}")
                if cfg.checkpoint.save and not save_due:
                    self.save()
                return p
            if exiting:
                self.log(f"exiting at iteration {p.iteration} (exit condition reached)")
                if cfg.checkpoint.save and not save_due:
                    self.save()
                return p
        self._finish_step(in_flight)
        if last_eval is None or last_eval[0] != p.iteration:
            self.evaluate("validation")
        if self.harness and self.last_harness != p.iteration:
            self.evaluate_harness()
        if cfg.checkpoint.save and not (cfg.checkpoint.save_interval and
                                        p.iteration % cfg.checkpoint.save_interval == 0):
            self.save()
        self.evaluate("test")
        return p

    def _finish_step(self, in_flight) -> None:
        """Wait for a started step (PendingStep, StepRecord), if any, then account for it:
        interval sums, loss-spike check, the log line. Returns None (nothing in flight)."""
        if in_flight is None:
            return None
        pending, record = in_flight
        cfg, interval = self.cfg, self._interval
        result = pending.result()
        # from when the step before it finished, if the host began this step before it saw
        # that (steps overlapping), else from when the host began this step; finished_at is
        # the device's time, so the last step before a wait is not cut short by the time the
        # host took to look at the one before it
        overlapped = record.t0 < self._last_observed
        dt = pending.finished_at - (self._last_finished if overlapped else record.t0)
        self._last_finished, self._last_observed = pending.finished_at, pending.observed_at
        interval["samples"] += record.gbs
        interval["loss"] += result.loss
        if self._spikes_before_update:
            spike = record.found[-1] if record.found else None
        else:
            spike = self.spikes.check(record.iteration, result.loss) if self.spikes else None
        if spike:
            self.log(spike.describe() + (" - batch skipped, no update"
                                         if self._spikes_before_update else ""))
            self.tb.scalars({"train/loss spike": result.loss}, record.iteration,
                            record.consumed_samples, record.consumed_tokens)
            if cfg.training.loss_spike_action == "stop":
                self.log(f"stopping without saving (--loss-spike-action stop); restart from "
                         f"the last checkpoint with --skip-train-iteration-range covering "
                         f"iteration {record.iteration}")
                raise SystemExit(LOSS_SPIKE_EXIT_CODE)
        interval["steps"] += 1
        interval["skipped"] += int(result.skipped)
        interval["time"] += dt
        if self._logs_at(record.iteration):
            self._log_interval(interval, result, record)
            self._interval = _new_interval()
        return None

    @property
    def _spikes_before_update(self) -> bool:
        """--loss-spike-action skip: the engine checks each step's loss before its update."""
        return bool(self.spikes) and self.cfg.training.loss_spike_action == "skip"

    def _logs_at(self, iteration: int) -> bool:
        return iteration % self.cfg.logging.log_interval == 0 or iteration == self.total_iters

    def _log_interval(self, interval: dict, result, p: "StepRecord") -> None:
        steps, gbs = interval["steps"], p.gbs
        tokens_per_s = interval["samples"] * self.cfg.model.seq_length / interval["time"]
        tflops = tokens_per_s * self.flops_per_token / self.layout.world_size / 1e12
        values = {
            "iteration": f"{p.iteration}/{self.total_iters}",
            "consumed samples": p.consumed_samples, "consumed tokens": p.consumed_tokens,
            "lr": result.lr, "global batch": gbs, "loss": interval["loss"] / steps,
            "grad norm": result.grad_norm, "skipped": interval["skipped"],
            "step ms": 1000 * interval["time"] / steps, "tokens/s": tokens_per_s,
            "TFLOP/s/GPU": tflops if self.layout.device.type == "cuda" else None,
            "MFU %": 100 * tflops * 1e12 / self.peak if self.peak else None,
            "params norm": self.engine.param_norm() if self.cfg.logging.log_params_norm
            else None,
        }
        for phase, seconds in self.engine.timer.pop().items():  # --log-timers-to-tensorboard
            values[f"{phase} ms"] = 1000 * seconds / steps
        layers = result.layer_grad_norms or {}
        if layers:
            worst = max(layers, key=layers.get)
            values["max layer grad norm"] = f"{layers[worst]:.3E} ({worst})"
        if torch.cuda.is_available():
            values["mem GiB"] = torch.cuda.max_memory_allocated() / 2**30
        self.log(format_log_line(values))
        numeric = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        entry = dict(numeric, iteration=p.iteration)
        entry["logged at"] = time.time()  # wall clock, for tools that watch the run
        self.history.append(entry)
        self.tb.scalars({f"train/{k}": v for k, v in numeric.items()}, p.iteration,
                        p.consumed_samples, p.consumed_tokens)
        if layers:
            self.history[-1]["layer grad norms"] = layers
            self.tb.scalars({f"grad norm/{k}": v for k, v in layers.items()}, p.iteration,
                            p.consumed_samples, p.consumed_tokens)

    def evaluate(self, split: str):
        """Loss on each validation (or test) set; (iteration, loss of the first set) or None.
        Named sets (BigScience's weighted split groups) log as "validation NAME"."""
        sets = self.data.valid_loaders if split == "validation" else self.data.test_loaders
        self.gc.around_evaluation()
        first = None
        for name, make in sets:
            loader = make()
            loss = None if loader is None else evaluate_loss(
                self.engine, loader, self.cfg.training.eval_iters, self.data.eod,
                self.cfg.data.reset_attention_mask, self.layout, **self._prefix_lm_options())
            if loss is None:
                continue
            label = f"{split} {name}" if name else split
            ppl = math.exp(min(loss, 50.0))
            p = self.progress
            self.log(f"{label} loss at iteration {p.iteration} | lm loss {loss:.4f} | "
                     f"lm loss PPL {ppl:.3f}")
            self.history.append({"iteration": p.iteration, f"{label} loss": loss,
                                 f"{label} ppl": ppl})
            self.tb.scalars({f"{label}/lm loss": loss, f"{label}/lm loss PPL": ppl},
                            p.iteration, p.consumed_samples, p.consumed_tokens)
            first = first or (p.iteration, loss)
        self.gc.around_evaluation()
        return first

    def evaluate_harness(self) -> dict:
        """--eval-harness-tasks on the current weights; scores logged and sent to TensorBoard."""
        p = self.progress
        t0 = time.perf_counter()
        scores = self.harness.run()
        self.last_harness = p.iteration
        if scores:
            self.log(f"eval harness at iteration {p.iteration} | " + " | ".join(
                f"{k} {v:.4f}" for k, v in scores.items()) +
                f" | {time.perf_counter() - t0:.1f}s")
            self.history.append({"iteration": p.iteration,
                                 **{f"eval harness {k}": v for k, v in scores.items()}})
            self.tb.scalars({f"eval harness/{k}": v for k, v in scores.items()}, p.iteration,
                            p.consumed_samples, p.consumed_tokens)
        return scores

    def _should_save_now(self) -> bool:
        c = self.cfg.checkpoint
        return bool(c.save and c.save_interval and self.progress.iteration % c.save_interval == 0)

    def _should_exit(self, start_time: float, elapsed_minutes: MaxOverRanksLater) -> bool:
        """--exit-interval, or --exit-duration-in-mins passed on any rank (above one rank known
        one step late, when every rank knows it, without the host waiting for the device)."""
        t = self.cfg.training
        stop = bool(t.exit_interval and self.progress.iteration % t.exit_interval == 0)
        if t.exit_duration_in_mins is not None:
            elapsed = elapsed_minutes((time.monotonic() - start_time) / 60.0)
            stop = stop or (elapsed is not None and elapsed > t.exit_duration_in_mins)
        return stop

    def save(self) -> None:
        t0 = time.perf_counter()
        tag = ckpt.save_checkpoint(self.engine, self.cfg, self.progress, self.cfg.checkpoint.save,
                                   self.layout.rank == 0)
        self.log(f"saved checkpoint {self.cfg.checkpoint.save}/{tag} in "
                 f"{time.perf_counter() - t0:.1f}s")
