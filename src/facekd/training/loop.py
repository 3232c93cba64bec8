"""One training loop for teachers and students: :func:`fit`.

What is optimised is the backbone plus a generic *objective*: an ``nn.Module`` called as
``objective(emb, batch) -> {"loss": scalar, <part>: scalar, ...}`` (a margin head for a teacher, a
distillation method for a student). Its trainable parameters go to the optimiser with the
backbone's, and its ``state_dict()`` (buffers too: queues, centres) goes into the checkpoint.

Batches. ``optim.batch_size`` is the *global* batch of one optimizer step: it is split evenly over
the ranks and then over ``grad_accum`` micro-batches, so the samples of a step (and so the result,
BatchNorm aside) do not depend on the number of processes. The data order of epoch ``e`` is a
permutation drawn from ``(seed, e)`` and flips are hashed from ``(seed, e, index)``; a run resumed
mid-epoch skips the consumed batches of that permutation without decoding them, so with
``deterministic: true`` a resumed run ends bit-identical to an uninterrupted one on CPU.

Faults. A non-finite loss part (or gradient norm) raises :class:`TrainingError` naming the step and
the part before anything is updated; nothing is checkpointed after the fault and the MLflow run
ends FAILED. SIGTERM/SIGINT finish the current step, save a checkpoint, end the run KILLED and
exit with ``128 + signal`` (143 for SIGTERM).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from facekd.config import OptimParams
from facekd.errors import TrainingError
from facekd.mlops.tracking import NullTracker
from facekd.training import checkpoint as ckpt
from facekd.training.batch import StepBatch
from facekd.training.distributed import (DistInfo, all_reduce_sum, average_gradients, broadcast_state, current_dist,
                                         unwrap, wrap_backbone)
from facekd.training.optim import build_optimizer, build_scheduler
from facekd.training.progress import PROGRESS_EVERY_S, LogWindow, ProgressLine, log_interval
from facekd.training.runtime import (StopSignals, amp_dtype, apply_threads, deterministic_kernels,
                                     use_channels_last)
from facekd.training.sampling import EpochBatches, StepPlan, derived_seed, seed_everything
from facekd.training.sharded_state import ShardedState

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

Batch = dict[str, Any]  # what the data loader yields (facekd.data.dataset.collate)
EvalFn = Callable[["nn.Module", int], dict[str, float]]
def _plain_config(config: dict[str, Any]) -> dict[str, Any]:
    """JSON round trip: tuples become lists, so stored and current configs compare equal."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def _finished_elsewise(state: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether a checkpoint is the end of a run under another config (an unfinished one is refused
    by ``check_config`` instead; checkpoints from before ``total_steps`` was saved count as unfinished)."""
    return (state.get("config_hash") != ckpt.config_hash(config)
            and state["step"] >= state.get("total_steps", float("inf")))


class Trainer:
    """The state and steps of one training run; :func:`fit` is the public entry point."""

    def __init__(self, *, run_name: str, backbone: "nn.Module", objective: "nn.Module", dataset: Any,
                 optim: OptimParams, run_dir: Path, config: dict[str, Any], seed: int, tracker: Any,
                 extra_batch_fn: Callable[[StepBatch], StepBatch] | None, eval_fn: EvalFn | None,
                 dist: DistInfo, log_every: int | None, progress_every_s: float = PROGRESS_EVERY_S) -> None:
        import torch

        self.run_name, self.optim, self.run_dir = run_name, optim, Path(run_dir)
        self.config, self.config_hash = config, ckpt.config_hash(config)
        self.seed, self.dist = seed, dist
        self.progress_every_s = progress_every_s
        self.tracker = tracker if dist.is_main else NullTracker()
        self.extra_batch_fn, self.eval_fn = extra_batch_fn, eval_fn
        self.dataset = dataset
        self.plan = StepPlan.build(len(dataset), optim, dist)
        self.log_every = max(1, log_every) if log_every else log_interval(self.plan.total_steps)
        self.device = dist.device
        self.amp_dtype = amp_dtype(optim.amp, self.device)
        self.backbone = backbone.to(self.device)
        self.threads = apply_threads(optim.threads) if self.device.type == "cpu" else None
        self.channels_last = use_channels_last(optim.channels_last, backbone, self.device, self.threads)
        if self.channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.objective = objective.to(self.device)
        # An objective that shards or syncs itself across ranks (PartialFC) sets this flag.
        self.objective_synced = bool(getattr(objective, "handles_distributed", False))
        self.train_params = [p for p in list(backbone.parameters()) + list(objective.parameters()) if p.requires_grad]
        self.optimizer = build_optimizer(
            [{"params": [p for p in backbone.parameters() if p.requires_grad]},
             {"params": [p for p in objective.parameters() if p.requires_grad]}], optim)
        self.scheduler = build_scheduler(self.optimizer, optim, self.plan.steps_per_epoch)
        self.sharded = ShardedState(objective, self.optimizer, dist)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.sampler = EpochBatches(len(dataset), self.plan, dist, seed)
        self.loader_gen = torch.Generator()
        self.loader = self._make_loader()
        self.step = 0
        self.summary: dict[str, Any] = {"images": 0, "train_seconds": 0.0, "loss": {}}
        self.eval_metrics: dict[str, float] = {}
        self.window = LogWindow.open()
        self.run_id: str | None = None
        self.model: "nn.Module" = self.backbone
        self._clock = time.perf_counter()
        self._saved_step = -1
        self._eval_step = -1

    def _make_loader(self) -> Any:
        import torch

        from facekd.data.dataset import collate, worker_init_fn

        return torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=self.optim.workers, collate_fn=collate,
            worker_init_fn=worker_init_fn(self.dist.rank), generator=self.loader_gen,
            pin_memory=self.device.type == "cuda", persistent_workers=False)

    # ---- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint; collective (every rank calls it), independent of the number of ranks."""
        return {
            "format": 1,
            "step": self.step,
            "total_steps": self.plan.total_steps,
            "epoch": self.step // self.plan.steps_per_epoch,
            "model": unwrap(self.model).state_dict(),
            "objective": self.sharded.objective_state(),
            "optimizer": self.sharded.optimizer_state(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": ckpt.capture_rng(),
            "config_hash": self.config_hash,
            "config": self.config,
            "mlflow_run_id": self.run_id,
            "summary": self.summary,
            "log_window": self.window.state(),
            "world_size": self.dist.world_size,
            "threads": self.threads,
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load a checkpoint (config already checked) into every component."""
        self.backbone.load_state_dict(state["model"])
        self.sharded.load_objective(state["objective"])
        self.sharded.load_optimizer(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._resume_threads(state.get("threads"))
        self.step = int(state["step"])
        self.summary = state.get("summary", self.summary)
        self.window = LogWindow.resume(state.get("log_window"))
        if self.dist.is_main:
            ckpt.restore_rng(state["rng"])
        else:
            seed_everything(derived_seed(self.seed, self.dist.rank, self.step) % 2**32)
        log.info("resumed %s from step %d of %d", self.run_dir, self.step, self.plan.total_steps)

    def _restore_checked(self, state: dict[str, Any]) -> None:
        """:meth:`restore`, with a forged or foreign checkpoint (wrong shapes, keys or types, a step
        outside the run) reported as one TrainingError naming the folder instead of a traceback."""
        step = state.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= self.plan.total_steps:
            raise TrainingError(f"{self.run_dir}: checkpoint step {step!r} is not a whole number in "
                                f"[0, {self.plan.total_steps}]; delete {self.run_dir}/ to start over")
        try:
            self.restore(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as err:
            reason = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
            raise TrainingError(f"{self.run_dir}: checkpoint does not fit this run ({reason}); "
                                f"delete {self.run_dir}/ to start over") from None

    def _resume_threads(self, saved: Any) -> None:
        """Under ``threads: auto`` / ``idle``, go on with the thread count the run started with: the
        count changes some kernels' summation order, and a resumed run should stay bit-identical."""
        import torch

        chosen = self.optim.threads
        if self.threads is None or chosen not in ("auto", "idle") or not isinstance(saved, int) or saved < 1:
            return
        if saved != self.threads:
            log.info("resuming with the run's %d intra-op threads (%s chose %d now)", saved, chosen, self.threads)
            torch.set_num_threads(saved)
            self.threads = saved

    def save(self) -> None:
        """Checkpoint: built on every rank (sharded state is gathered), written by rank 0."""
        state = self.state_dict()
        if self.dist.is_main:
            ckpt.save_checkpoint(self.run_dir / ckpt.LAST, state)

    def prepare(self) -> None:
        """Resume if a checkpoint exists (else seed), sync ranks, wrap DDP, start tracking."""
        state = ckpt.load_latest(self.run_dir)
        if state is not None and _finished_elsewise(state, self.config):
            # New data or params after a completed run (dvc repro, retrain): nothing to resume.
            log.info("%s: its finished run had another config (%s); training from scratch", self.run_dir,
                     "; ".join(ckpt.config_diff(state.get("config", {}), self.config)[:5]))
            state = None
        if state is not None:
            ckpt.check_config(state, self.config, self.run_dir)
            self._restore_checked(state)
        else:
            seed_everything(derived_seed(self.seed, self.dist.rank, 0) % 2**32)
        if not self.objective_synced:
            broadcast_state(self.objective, self.dist)
        self.model = wrap_backbone(self.backbone, self.dist)  # DDP broadcasts rank 0's weights
        tags = {"facekd.run": self.run_name, "facekd.world_size": str(self.dist.world_size)}
        resume_id = state.get("mlflow_run_id") if state else None
        self.run_id = self.tracker.start(self.run_name, ckpt.flat_items(self.config), tags, self.config,
                                         resume_run_id=resume_id)

    # ---- one step ------------------------------------------------------------------------------

    def _to_device(self, batch: Batch) -> StepBatch:
        from facekd.data.dataset import normalize_batch

        out = StepBatch(image=normalize_batch(batch["image"], self.device, self.channels_last),
                        label=batch["label"].to(self.device, non_blocking=True),
                        index=batch["index"].to(self.device, non_blocking=True),
                        flip=batch["flip"].to(self.device, non_blocking=True),
                        step=self.step, epoch=self.step / self.plan.steps_per_epoch)
        return self.extra_batch_fn(out) if self.extra_batch_fn else out

    def _forward(self, batch: StepBatch) -> dict[str, "torch.Tensor"]:
        import torch

        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            emb = self.model(batch.image)  # (B, d)
        out = self.objective(emb.float(), batch)
        if "loss" not in out:
            raise TrainingError(f"the training objective {type(self.objective).__name__} returned no 'loss' "
                                f"(keys: {sorted(out)})")
        return out

    def _reduce_parts(self, out: dict[str, "torch.Tensor"], stop: bool) -> tuple[dict[str, float], bool]:
        """Mean of every loss part over ranks, plus the OR of the stop flags; non-finite -> error."""
        import torch

        names = sorted(out)
        values = torch.stack([out[k].detach().float().reshape(()) for k in names]
                             + [torch.tensor(float(stop), device=self.device)])
        values = all_reduce_sum(values, self.dist).cpu()
        parts = {k: float(v) / self.dist.world_size for k, v in zip(names, values[:-1])}
        bad = [k for k, v in parts.items() if not math.isfinite(v)]
        if bad:
            shown = ", ".join(f"{k}={parts[k]}" for k in bad)
            raise TrainingError(
                f"{self.run_name}: non-finite loss at step {self.step + 1} (epoch {self.step // self.plan.steps_per_epoch + 1}):"
                f" {shown}. Nothing was updated; the last checkpoint in {self.run_dir}/ is from step <= {self.step}. "
                "Lower optim.lr, keep optim.clip_grad_norm > 0, or check the data")
        return parts, bool(values[-1] > 0)

    def _grad_norm(self) -> float:
        import torch

        max_norm = self.optim.clip_grad_norm if self.optim.clip_grad_norm > 0 else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(self.train_params, max_norm))
        if not math.isfinite(norm) and not self.scaler.is_enabled():  # fp16 skips such steps itself
            raise TrainingError(
                f"{self.run_name}: non-finite gradient norm at step {self.step + 1} (grad_norm={norm}); "
                f"nothing was updated; lower optim.lr or set optim.clip_grad_norm > 0")
        return norm

    def train_step(self, micro_batches: list[Batch], stop_requested: Callable[[], bool]) -> tuple[dict[str, float], bool]:
        """One optimizer step over ``grad_accum`` micro-batches; returns (loss parts, stop?)."""
        sums: dict[str, float] = {}
        stop = False
        for a, raw in enumerate(micro_batches):
            last = a == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                out = self._forward(self._to_device(raw))
                parts, stop_any = self._reduce_parts(out, stop_requested())
                stop = stop or stop_any
                self.scaler.scale(out["loss"] / len(micro_batches)).backward()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v / len(micro_batches)
        self.scaler.unscale_(self.optimizer)
        if not self.objective_synced:
            average_gradients([p for p in self.objective.parameters() if p.requires_grad], self.dist)
        sums["grad_norm"] = self._grad_norm()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return sums, stop

    # ---- epochs --------------------------------------------------------------------------------

    def _micro_batches(self) -> Iterator[list[Batch]]:
        """Group the loader's micro-batches of every remaining epoch into steps."""
        while self.step < self.plan.total_steps:
            epoch, offset = divmod(self.step, self.plan.steps_per_epoch)
            self.sampler.set_epoch(epoch, offset)
            self.dataset.set_epoch(epoch)
            self.loader_gen.manual_seed(derived_seed(self.seed, epoch, 1))
            group: list[Batch] = []
            for batch in self.loader:
                group.append(batch)
                if len(group) == self.plan.grad_accum:
                    yield group
                    group = []

    def _log(self, window: LogWindow) -> None:
        elapsed = time.perf_counter() - window.started
        means = window.means()
        metrics = {f"train/{k}": v for k, v in means.items()}
        metrics["train/lr"] = self.scheduler.get_last_lr()[0]
        metrics["train/img_per_s"] = window.images / elapsed if elapsed > 0 else 0.0
        metrics["train/epoch"] = self.step / self.plan.steps_per_epoch
        if self.scaler.is_enabled():
            metrics["train/amp_scale"] = float(self.scaler.get_scale())
        self.tracker.log_metrics(metrics, self.step)
        self.summary["loss"] = {k: v for k, v in means.items() if k != "grad_norm"}

    def _evaluate(self) -> None:
        import torch

        if self.eval_fn is None or not self.dist.is_main:
            return
        self.backbone.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():  # eval must not shift training RNG
                metrics = self.eval_fn(self.backbone, self.step)
        finally:
            self.backbone.train()
        self.eval_metrics = {k: float(v) for k, v in metrics.items()}
        self._eval_step = self.step
        self.tracker.log_metrics(self.eval_metrics, self.step)

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def _save(self) -> None:
        """Checkpoint now, adding the training time since the previous save to the summary."""
        if self.step == self._saved_step:
            return
        now = time.perf_counter()
        self.summary["train_seconds"] += now - self._clock
        self._clock = now
        self.save()
        self._saved_step = self.step

    def run(self, signals: StopSignals, max_steps: int | None) -> bool:
        """Train to the end, to ``max_steps`` or to a stop signal (on any rank).

        Returns True when training stopped before the last step (resumable).
        """
        from tqdm import tqdm

        limit = min(self.plan.total_steps, max_steps if max_steps is not None else self.plan.total_steps)
        self.backbone.train()
        self.objective.train()
        self._clock, self._saved_step = time.perf_counter(), self.step
        bar = tqdm(total=self.plan.total_steps, initial=self.step, unit="step", desc=self.run_name,
                   disable=not (self.dist.is_main and sys.stderr.isatty()), dynamic_ncols=True)
        progress = ProgressLine(self.run_name, self.step, self.plan.total_steps, self.progress_every_s,
                             enabled=self.dist.is_main and bar.disable)
        self.window = LogWindow.resume(self.window.state())  # restart the clock: time to here is not training
        stop = False
        try:
            steps = self._micro_batches() if self.step < limit else iter(())
            for group in steps:
                parts, stop = self.train_step(group, lambda: signals.signum != 0)
                self.window.add(parts, self.plan.global_batch)
                self.summary["images"] += self.plan.global_batch
                bar.update(1)
                progress.update(self.step, self.plan.global_batch, parts["loss"])
                final = stop or self.step >= limit
                if self._due(self.log_every) or final:
                    self._log(self.window)
                    bar.set_postfix(loss=f"{parts['loss']:.4f}", lr=f"{self.scheduler.get_last_lr()[0]:.3g}")
                if self._due(self.log_every):  # a stop keeps its window: the resumed run completes it
                    self.window = LogWindow.open()
                if self._due(self.optim.eval_every):
                    self._evaluate()
                if self._due(self.plan.steps_per_epoch) and self.dist.is_main:
                    # One line per epoch: the progress report where no terminal shows the bar (dvc, CI).
                    log.info("%s: epoch %d/%d done (step %d/%d), loss %.4f", self.run_name,
                             self.step // self.plan.steps_per_epoch, self.plan.epochs, self.step,
                             self.plan.total_steps, parts["loss"])
                if final or self._due(self.optim.checkpoint_every) or self._due(self.plan.steps_per_epoch):
                    self._save()
                if final:
                    break
        finally:
            bar.close()
        self._save()
        if self.step >= self.plan.total_steps and self._eval_step != self.step:
            self._evaluate()
        return stop or self.step < self.plan.total_steps

    def result(self) -> dict[str, Any]:
        seconds = float(self.summary["train_seconds"])
        return {
            "step": self.step,
            "total_steps": self.plan.total_steps,
            "epochs": self.plan.epochs,
            "completed": self.step >= self.plan.total_steps,
            "images": int(self.summary["images"]),
            "train_seconds": seconds,
            "img_per_s": self.summary["images"] / seconds if seconds > 0 else 0.0,
            "loss": dict(self.summary["loss"]),
            "eval": dict(self.eval_metrics),
            "mlflow_run_id": self.run_id,
        }


def fit(*, run_name: str, backbone: "nn.Module", objective: "nn.Module", dataset: Any, optim: OptimParams,
        run_dir: Path, config: dict[str, Any], seed: int, tracker: Any,
        extra_batch_fn: Callable[[StepBatch], StepBatch] | None = None, eval_fn: EvalFn | None = None,
        dist: DistInfo | None = None, max_steps: int | None = None, log_every: int | None = None,
        progress_every_s: float = PROGRESS_EVERY_S) -> dict[str, Any]:
    """Train ``backbone`` + ``objective`` on ``dataset``, resuming from ``run_dir`` when possible.

    ``config``: the JSON-like config that defines this run (hashed into the checkpoint; a different
    config refuses to resume). ``extra_batch_fn(batch) -> batch`` adds keys (e.g. cached teacher
    features by ``batch.index`` and ``batch.flip``) to the device :class:`StepBatch` before the forward.
    ``eval_fn(backbone, step) -> metrics`` runs on rank 0 every ``optim.eval_every`` steps and at the
    end. ``max_steps`` stops (with a checkpoint) once that many steps are done. Metrics go to MLflow
    every ``log_every`` steps (default :func:`log_interval`: ~100 points a run). Without a terminal
    (DVC, CI, Prefect) rank 0 logs a progress line every ``progress_every_s`` seconds. Returns the final
    metrics (see :meth:`Trainer.result`); a run that is already complete does no step.
    """
    dist = dist or current_dist()
    with deterministic_kernels(optim.deterministic):
        trainer = Trainer(run_name=run_name, backbone=backbone, objective=objective, dataset=dataset,
                          optim=optim, run_dir=Path(run_dir), config=_plain_config(config), seed=seed,
                          tracker=tracker, extra_batch_fn=extra_batch_fn, eval_fn=eval_fn, dist=dist,
                          log_every=log_every, progress_every_s=progress_every_s)
        trainer.prepare()
        status = "FAILED"
        with StopSignals() as signals:
            try:
                stopped = trainer.run(signals, max_steps)
                status = "KILLED" if stopped else "FINISHED"
            except KeyboardInterrupt:
                status = "KILLED"
                raise
            finally:
                trainer.tracker.end(status)
            if stopped and (signals.signum or max_steps is None):
                # A signal here or on another rank (which then stopped us all): exit like the signal.
                raise SystemExit(128 + (signals.signum or signal.SIGTERM))
        return trainer.result()

