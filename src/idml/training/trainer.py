"""The training loop: one file to read from a batch arriving to the optimiser step.

:class:`Trainer` owns everything a run changes while it trains: the model and what runs it, the
optimiser, the AMP scaler, the best errors, where the run starts and the last checkpoint written.
``fit`` alternates :meth:`Trainer.train_epoch` and :meth:`Trainer.validate`, writes checkpoints
and prints the official code's console lines.

One training step, top to bottom (:meth:`Trainer.train_step`): the batch is augmented on the device
(:mod:`idml.data.augment`), mixed by CutMix or Mixup (:mod:`idml.mixing`), run through the network
whose head computes the introspective logits (:mod:`idml.ism`), and the mixed cross-entropy of
those logits is back-propagated. The step records its loss and hits on the device
(:class:`Meter`), so nothing waits for the accelerator until a line is printed or a checkpoint
is written.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from idml.checkpoint.schema import Checkpoint, check_optimizer_fits
from idml.config import TrainConfig
from idml.data.types import DataBundle
from idml.device.runtime import Runtime, sum_dtype
from idml.errors import IdmlError, NonFiniteLossError, RunStopped, one_line
from idml.metrics import NOT_FITTED, TemperatureFit, temperature_fit
from idml.mixing import MixedBatch, mix_batch, mixed_cross_entropy
from idml.training.checkpoints import RunCheckpoints
from idml.training.distributed import broadcast_buffers, gather_rows
from idml.training.ema import ModelEMA
from idml.training.host_reads import DeferredLines
from idml.training.resume import (
    ResumePoint,
    data_changes,
    own_rank_state,
    progress_fields,
    restore_rng,
    resume_point,
)
from idml.training.run_log import RunLog
from idml.training.schedule import Accumulation, Schedule, accumulation, learning_rate  # noqa: F401 - re-export
from idml.training.stopping import StopControl, StopRequest

Printer = Callable[[str], None]
#: A batch that is a whole optimiser step (no gradient accumulation).
WHOLE_STEP = Accumulation(first=True, last=True, weight=1.0)
#: Steps between two host reads of the "was any loss non-finite?" flag (besides checkpoints).
CHECK_EVERY = 50


def step_rng(seed: int, epoch: int, step: int, rank: int) -> np.random.Generator:
    """The random stream of one training step: reproducible from its position alone."""
    return np.random.default_rng([seed, epoch, step, rank])


def topk_correct(logits: Tensor, targets: Tensor, ks: tuple[int, ...]) -> Tensor:
    """How many targets are within the top-k predictions, for each k (a tensor, no sync)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == targets.unsqueeze(1)
    return torch.stack([hits[:, :k].sum() for k in ks])


class Averages(NamedTuple):
    """Mean loss and top-1/top-5 error (percent) over the images a :class:`Meter` has seen."""

    loss: float
    top1_err: float
    top5_err: float


class Meter:
    """Sums of loss and top-k hits, and the first step whose loss was not finite, on the device.

    Nothing here reads a value back to the host: the sums are read (one sync) only when a line is
    printed, and the non-finite flag only before a checkpoint and every ``CHECK_EVERY`` steps.
    """

    LOSS, HITS1, HITS5, IMAGES = range(4)  # positions in ``sums``
    _NO_STEP = torch.iinfo(torch.int64).max

    def __init__(self, device: torch.device, sums: Tensor | None = None) -> None:
        dtype = sum_dtype(device)  # float64, or float32 on MPS (no float64 there)
        if sums is None:
            self.sums = torch.zeros(4, dtype=dtype, device=device)
        else:  # converted where it is (the CPU, for a checkpoint's sums), then moved
            self.sums = sums.to(dtype=dtype, copy=True).to(device)
        self.last = torch.zeros_like(self.sums)
        self.first_bad_step = torch.full((), self._NO_STEP, dtype=torch.int64, device=device)

    def update(self, loss: Tensor, logits: Tensor, targets: Tensor, step: int = 0) -> None:
        hits = topk_correct(logits.detach(), targets, (1, 5)).to(self.sums.dtype)
        n = hits.new_full((1,), targets.shape[0])  # made on the device: no host-to-device copy
        self.last = torch.cat([loss.detach().to(self.sums.dtype).view(1) * n, hits, n])
        self.sums += self.last
        bad_here = torch.where(torch.isfinite(loss.detach()), self._NO_STEP, step)
        torch.minimum(self.first_bad_step, bad_here, out=self.first_bad_step)

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)

    @property
    def images(self) -> int:
        return int(self.sums[self.IMAGES].item())

    @staticmethod
    def averages(sums: list[float]) -> Averages:
        """The averages of host-side sums (loss, top-1 hits, top-5 hits, images)."""
        loss_sum, hits1, hits5, n = sums
        n = max(n, 1.0)
        return Averages(loss_sum / n, 100.0 * (1 - hits1 / n), 100.0 * (1 - hits5 / n))

    def average(self) -> Averages:
        """Over every image seen so far (one sync)."""
        return self.averages(self.sums.tolist())

    def snapshot(self) -> Tensor:
        """The last batch's sums, then the running sums, as one device tensor (for a printed line)."""
        return torch.cat([self.last, self.sums])

    def first_nonfinite_step(self, distributed: bool) -> int | None:
        """The first step (on any rank) whose loss was NaN or infinite, or None (one sync)."""
        first = self.first_bad_step.clone()
        if distributed:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        value = int(first.item())
        return None if value == self._NO_STEP else value


@dataclass
class EpochResult:
    """What one pass over a split measured (errors in percent)."""

    loss: float
    top1_err: float
    top5_err: float
    images: int
    seconds: float


class Trainer:
    """One training run: ``Trainer(cfg, model, data, runtime, net=...)``, then :meth:`fit`.

    ``model`` is the plain module (what checkpoints hold); ``net`` is what runs the steps, the
    same module compiled and/or wrapped in DDP (default: ``model`` itself).
    """

    def __init__(
        self, cfg: TrainConfig, model: nn.Module, data: DataBundle, runtime: Runtime, *,
        net: nn.Module | None = None, printer: Printer = print,
    ) -> None:
        self.cfg, self.data, self.rt = cfg, data, runtime
        self.model = model
        self.net = model if net is None else net
        # fused on CUDA; elsewhere foreach: a few multi-tensor calls per step instead of ~4 per
        # parameter, with bit-identical results
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.momentum > 0, fused=runtime.fused_optimizer or None,
            foreach=None if runtime.fused_optimizer else True,
        )
        self.scaler = runtime.grad_scaler()
        self.schedule = Schedule(cfg.lr, cfg.dataset, cfg.epochs, cfg.sched, cfg.warmup_epochs)
        self.ema = ModelEMA(model, cfg.model_ema) if cfg.model_ema > 0 else None
        self.print = printer if runtime.is_main else (lambda _msg: None)
        self.log = RunLog(cfg.run_dir, self.print, is_main=runtime.is_main, verbose=cfg.verbose,
                          tensorboard=cfg.tensorboard, world_size=runtime.world_size)
        self.stopping = StopControl(runtime, cfg.stop_signal, cfg.stop_after)
        self.start = ResumePoint()  # epoch 0, step 0 unless load_state says otherwise
        self.best_err1, self.best_err5 = 100.0, 100.0
        self.best_epoch: int | None = None  # whose model is model_best.pth.tar
        self.best_weights = "model"  # or "ema": which weights scored best_err1
        self.grads_pending = False  # inside a group of --grad_accum_steps batches
        #: with --val_split: the softmax temperature fitted on the validation split (this epoch's, saved
        #: with its checkpoint; and the best model's), and the test errors at the best-validation and
        #: at the last epoch ({"epoch", "top1_err", "top5_err", "loss"})
        self.temperature: float | None = None
        self.best_temperature: TemperatureFit = NOT_FITTED
        self.test_at_best: dict[str, float] | None = None
        self.test_at_last: dict[str, float] | None = None
        self.saved = RunCheckpoints(cfg.run_dir, runtime)  # what was written, for messages and the report
        self.lines = DeferredLines(runtime.device)  # per-step lines, read back without waiting for the GPU
        #: the official code's console lines verbatim (its datasets and protocol), else idml's own
        self.official_console = cfg.official_protocol
        #: top-5 errors are shown only where they say something (more than 5 classes)
        self.shows_top5 = len(data.class_names) > 5

    def _top5(self, text: str) -> str:
        """``text`` (a top-5 part of a line) where top-5 errors are shown, else nothing."""
        return text if self.shows_top5 else ""

    # -- one step -----------------------------------------------------------------------------
    def prepare_batch(self, images: Tensor, targets: Tensor, rng: np.random.Generator) -> MixedBatch:
        """The input pipeline of a step on the device: augmentation, memory format, CutMix/Mixup.

        ``data.train_transform`` is :class:`idml.data.augment.TrainAugment` for the in-memory
        datasets (crop, flip, normalise); ImageNet batches arrive augmented by the loader's workers.
        """
        images = self.rt.formatted(self.data.train_transform(images, rng))
        return mix_batch(images, targets, self.cfg.mix, rng)

    def _grad_sync(self, part: Accumulation) -> contextlib.AbstractContextManager:
        """DDP all-reduces the gradients on the last batch of an accumulation group only."""
        return self.net.no_sync() if self.rt.distributed and not part.last else contextlib.nullcontext()

    def train_step(self, images: Tensor, targets: Tensor, rng: np.random.Generator, meter: Meter,
                   step: int = 0, part: Accumulation = WHOLE_STEP) -> None:
        """One batch: forward, loss, backward; the optimiser steps after the last batch of its group."""
        batch = self.prepare_batch(images, targets, rng)
        with self._grad_sync(part):
            with self.rt.autocast():
                out = self.net(batch.images)
            loss = mixed_cross_entropy(out.train_logits, batch, self.cfg.label_smoothing)
            if part.first:
                self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss if part.weight == 1.0 else loss * part.weight).backward()
        if part.last:
            self.optimizer_step()
        self.grads_pending = not part.last
        meter.update(loss, out.train_logits, targets, step)

    def optimizer_step(self) -> None:
        """Clip (``--clip_grad_norm``, on unscaled gradients), step, then update the EMA."""
        if self.cfg.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update()

    # -- epochs -------------------------------------------------------------------------------
    def set_lr(self, epoch: int, step: int = 0, steps: int = 1) -> float:
        """The learning rate of batch ``step`` of ``epoch`` (``steps`` per epoch), set on the optimiser."""
        lr = self.schedule.at(epoch, step, steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _epoch_start(self, epoch: int) -> tuple[int, Meter]:
        """The first step to run in ``epoch`` and its meter (both from the checkpoint on resume)."""
        resuming = epoch == self.start.epoch and self.start.step > 0
        first = self.start.step if resuming else 0
        self.data.train.set_epoch(epoch, first)
        sums = self.start.train_sums if resuming else None
        return first, Meter(self.rt.device, sums)

    def check_loss(self, epoch: int, meter: Meter) -> None:
        """Raise :class:`NonFiniteLossError` (on every rank) if a loss of this epoch was not finite."""
        step = meter.first_nonfinite_step(self.rt.distributed)
        if step is not None:
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite at epoch {epoch}, step {step} (counted from 0); "
                f"stopped without saving ({self.saved.last}): lower --lr (or try --amp off) "
                "and continue with --resume auto"
            )

    def check_validation(self, epoch: int, val: EpochResult) -> None:
        """A NaN validation loss means the model diverged: stop before saving it or calling it best."""
        if not math.isfinite(val.loss):
            raise NonFiniteLossError(
                f"the validation loss became NaN or infinite at epoch {epoch}: the model diverged; stopped "
                f"without saving ({self.saved.last}): lower --lr (or try --amp off) and continue with --resume auto"
            )

    def _stopped(self, stop: StopRequest) -> RunStopped:
        why = f"after --stop_after {self.cfg.stop_after:g} h" if stop.clock else f"by signal {stop.signum}"
        return RunStopped(f"stopped {why}; saved {self.saved.last}: continue with the same "
                          "command plus --resume auto", 128 + stop.signum)

    def _prints(self, step: int) -> bool:
        """Whether this step has a console line: verbose runs, every ``--print-freq`` steps, rank 0 only."""
        return self.cfg.verbose and self.rt.is_main and step % self.cfg.print_freq == 0

    def _print_step(self, epoch: int, step: int, steps: int, lr: float, meter: Meter, timing: str) -> None:
        def emit(values: list[float]) -> None:
            batch, running = Meter.averages(values[:4]), Meter.averages(values[4:])
            self.log.step(
                f"Epoch: [{epoch}/{self.cfg.epochs}][{step}/{steps}]\tLR: {lr:.6f}\t{timing}\t"
                f"Loss {batch.loss:.4f} ({running.loss:.4f})\t"
                f"Top 1-err {batch.top1_err:.4f} ({running.top1_err:.4f})"
                + self._top5(f"\tTop 5-err {batch.top5_err:.4f} ({running.top5_err:.4f})"),
                loss=running.loss, top1_err=running.top1_err,
            )
        self.lines.add(meter.snapshot(), emit)

    def train_epoch(self, epoch: int) -> EpochResult:
        """Train one epoch. A stop signal checkpoints the position and raises :class:`RunStopped`."""
        cfg = self.cfg
        self.net.train()
        first, meter = self._epoch_start(epoch)
        steps = first + len(self.data.train)
        lr = self.set_lr(epoch, first, steps)
        start = last = time.perf_counter()
        images_seen, waited = 0, 0.0
        batches = self.log.progress(self.stopping.batches(self.data.train), f"Epoch {epoch}/{cfg.epochs}",
                                    steps, first)
        for step, item in enumerate(batches, start=first):
            if isinstance(item, StopRequest):
                self.lines.flush()
                self.log.end_progress()
                self.save_position(epoch, step, meter)
                raise self._stopped(item)
            data_time = time.perf_counter() - last
            waited += data_time
            images, targets = (self.rt.to_device(t) for t in item)
            if self.schedule.per_step:
                lr = self.set_lr(epoch, step, steps)
            part = accumulation(step, steps, cfg.grad_accum_steps)
            self.train_step(images, targets, step_rng(cfg.seed, epoch, step, self.rt.rank), meter, step, part)
            images_seen += targets.shape[0]
            done, every = step + 1, cfg.save_every_steps
            if every and done % every == 0 and done < steps:
                self.save_position(epoch, done, meter)
            elif done % CHECK_EVERY == 0:
                self.check_loss(epoch, meter)
            if self._prints(step):
                now = time.perf_counter()
                timing = f"Time {now - last:.3f} ({(now - start) / (done - first):.3f})\tData {data_time:.3f}"
                self._print_step(epoch, step, steps, lr, meter, timing)
            self.lines.poll()
            last = time.perf_counter()
        self.lines.flush()
        meter.all_reduce()
        avg = meter.average()
        self.print(f"* Epoch: [{epoch}/{cfg.epochs}]\t Top 1-err {avg.top1_err:.3f}"
                   f"{self._top5(f'  Top 5-err {avg.top5_err:.3f}')}\t Train Loss {avg.loss:.3f}")
        elapsed = time.perf_counter() - start
        self.print(f"* Data wait: {waited:.1f} s of {elapsed:.1f} s of training ({waited / max(elapsed, 1e-9):.0%}): "
                   "the time the steps waited for their batch (docs/input-pipeline.md)")
        self.check_loss(epoch, meter)
        return EpochResult(*avg, images_seen, time.perf_counter() - start)

    @torch.inference_mode()
    def validate(self, epoch: int, ema: bool = False, split: str = "selection",
                 keep: list[tuple[Tensor, Tensor]] | None = None) -> EpochResult:
        """Top-1/top-5 error of the plain logits over a whole evaluation split (all ranks), with the
        trained weights or (``ema``) their moving average.

        ``split`` names a split of :class:`idml.data.types.DataBundle`: ``"selection"`` (what the
        best epoch is chosen on) or ``"test"``. ``keep`` (a list) receives this rank's (logits,
        targets) batches, for fitting the temperature.
        """
        if ema and self.ema is not None:
            model, label = self.ema.module, "EMA "
        else:
            model, label = (self.model if self.rt.distributed else self.net), ""
        broadcast_buffers(self.ema.module if label else self.model, self.rt)
        model.eval()
        loader = self.data.selection if split == "selection" else self.data.test
        held_out = self.data.held_out and split == "selection"
        title, loss_name = ((f"Val {label}(held-out share of train)", "Val Loss") if held_out
                            else (f"Test {label}(on val set)", "Test Loss"))
        meter = Meter(self.rt.device)
        start = time.perf_counter()
        steps = len(loader)
        batches = self.log.progress(self.stopping.batches(loader, stoppable=False),
                                    f"{title.split()[0]} {label}{epoch}/{self.cfg.epochs}", steps)
        for step, (images, targets) in enumerate(batches):
            images, targets = self.rt.to_device(images), self.rt.to_device(targets)
            with self.rt.autocast():
                logits = model(self.rt.formatted(self.data.eval_transform(images))).logits
            loss = nn.functional.cross_entropy(logits.float(), targets)
            meter.update(loss, logits, targets)
            if keep is not None:
                keep.append((logits.float(), targets))
            if self._prints(step):
                self.lines.add(meter.last,
                               lambda values, step=step: self._print_test_step(title, epoch, step, steps, values))
            self.lines.poll()
        self.lines.flush()
        meter.all_reduce()
        avg = meter.average()
        self.print(f"* {label}Epoch: [{epoch}/{self.cfg.epochs}]\t Top 1-err {avg.top1_err:.3f}"
                   f"{self._top5(f'  Top 5-err {avg.top5_err:.3f}')}\t {loss_name} {avg.loss:.3f}")
        return EpochResult(*avg, meter.images, time.perf_counter() - start)

    def _print_test_step(self, title: str, epoch: int, step: int, steps: int, values: list[float]) -> None:
        batch = Meter.averages(values)
        self.log.step(f"{title}: [{epoch}/{self.cfg.epochs}][{step}/{steps}]\t"
                      f"Top 1-err {batch.top1_err:.4f}" + self._top5(f"\tTop 5-err {batch.top5_err:.4f}"),
                      batch_top1_err=batch.top1_err)

    def fit_temperature(self, kept: list[tuple[Tensor, Tensor]]) -> TemperatureFit:
        """The softmax temperature minimising the NLL of the validation logits of every rank (or why
        there is none: no validation mistakes, no interior minimum)."""
        logits = torch.cat([batch[0] for batch in kept]).cpu().double().numpy()
        targets = torch.cat([batch[1] for batch in kept]).cpu().numpy()
        logits, targets = gather_rows(logits, self.rt), gather_rows(targets, self.rt)
        return temperature_fit(logits, targets)

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoint(self, epoch: int, step: int | None = None, meter: Meter | None = None) -> Checkpoint:
        """Everything a checkpoint holds: at the end of ``epoch`` (counted from 0), or with ``step``
        after that many of its steps. Gathers every rank's RNG states: all ranks call it."""
        grads = [p.grad for p in self.model.parameters()] if self.grads_pending and step else None
        progress = progress_fields(self.rt, self.cfg.batch_size, step or 0, None if meter is None else meter.sums,
                                   grads)
        return Checkpoint(
            model=self.cfg.model_spec.to_dict() | {"num_classes": self.data.num_classes},
            state_dict=self.model.state_dict(),
            epoch=epoch + 1 if step is None else epoch,
            arch=self.cfg.net_type,
            best_err1=self.best_err1,
            best_err5=self.best_err5,
            best_epoch=self.best_epoch,
            best_weights=self.best_weights,
            temperature=self.temperature,
            test_at_best=self.test_at_best,
            test_at_last=self.test_at_last,
            class_names=list(self.data.class_names),
            mean=list(self.data.mean),
            std=list(self.data.std),
            input_size=self.data.input_size,
            data=self.data.identity or None,
            # the memory format this run used, which --channels_last left to the runtime when not given:
            # idml eval and predict run the network as it trained (config.yaml keeps the settings as given)
            config=self.cfg.to_dict() | {"channels_last": self.rt.channels_last},
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            ema=None if self.ema is None else self.ema.state_dict(),
            **progress,
        )

    def load_state(self, ckpt: Checkpoint, path: Path) -> list[str]:
        """Take back a checkpoint's weights, optimiser, scaler, best errors, position and RNG states.

        Returns notes on anything that makes the continuation differ from an uninterrupted run.
        """
        check_optimizer_fits(ckpt.optimizer, [p for g in self.optimizer.param_groups for p in g["params"]], path)
        try:
            self.model.load_state_dict(ckpt.state_dict)
            self.optimizer.load_state_dict(ckpt.optimizer)
            for group in self.optimizer.param_groups:  # the checkpoint's choice was for its own device
                group["fused"] = self.rt.fused_optimizer or None
            self._apply_optimiser_settings()
        except (RuntimeError, ValueError, KeyError) as exc:
            raise IdmlError(f"{path} does not fit this model or optimiser ({one_line(exc)[:200]}); "
                            "resume with the checkpoint's settings or start a new --expname") from exc
        if ckpt.scaler and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt.scaler)
        self.best_err1 = float(ckpt.best_err1)
        self.best_err5 = float(ckpt.best_err5 if ckpt.best_err5 is not None else 100.0)
        self.best_epoch = ckpt.best_epoch
        self.temperature = ckpt.temperature
        if ckpt.temperature is not None and ckpt.best_epoch is not None and ckpt.step == 0 \
                and ckpt.best_epoch + 1 == ckpt.epoch:  # the checkpoint's own epoch was the best
            self.best_temperature = TemperatureFit(ckpt.temperature)
        self.test_at_best, self.test_at_last = ckpt.test_at_best, ckpt.test_at_last
        notes: list[str] = []
        own = own_rank_state(ckpt, self.rt, notes)
        if own is not None:
            restore_rng(own, self.rt.device)  # dropout, ImageNet workers' seeds: as if never stopped
        self._load_ema(ckpt, notes)
        self.start = resume_point(ckpt, self.cfg, self.rt, own, notes, path)
        notes += data_changes(ckpt, self.cfg, self.data, path)
        self._restore_pending_grads(notes)
        self.saved.last = f"{path} (resumes at epoch {self.start.epoch}, step {self.start.step})"
        return notes

    def _apply_optimiser_settings(self) -> None:
        """This run's momentum and weight decay, not the loaded optimiser's (resume.py notes a change)."""
        for group in self.optimizer.param_groups:
            group.update(momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay,
                         nesterov=self.cfg.momentum > 0)

    def _load_ema(self, ckpt: Checkpoint, notes: list[str]) -> None:
        """The checkpoint's moving average (``--model_ema``), or a fresh one from its weights."""
        self.best_weights = ckpt.best_weights
        if self.ema is None:
            if ckpt.ema:
                notes.append("the checkpoint holds an EMA of the weights but this run has no --model_ema: dropped")
            return
        if not ckpt.ema:
            self.ema = ModelEMA(self.model, self.cfg.model_ema)
            notes.append("the checkpoint holds no EMA of the weights: the average starts from its weights now")
            return
        try:
            self.ema.load_state_dict(ckpt.ema)
        except (RuntimeError, KeyError) as exc:
            raise IdmlError(f"the checkpoint's EMA does not fit this model ({one_line(exc)})") from exc
        if float(ckpt.ema.get("decay", self.cfg.model_ema)) != self.cfg.model_ema:
            notes.append(f"--model_ema changed ({ckpt.ema['decay']} -> {self.cfg.model_ema}): "
                         "the average continues with the new decay")

    def _restore_pending_grads(self, notes: list[str]) -> None:
        """Gradients accumulated inside a group of --grad_accum_steps batches when the run stopped."""
        grads = self.start.accum_grads
        self.grads_pending = grads is not None
        if grads is None:
            return
        params = list(self.model.parameters())
        fits = len(grads) == len(params) and all(
            g is None or g.shape == p.shape for g, p in zip(grads, params, strict=False))
        if not fits or self.cfg.grad_accum_steps == 1:
            notes.append("the checkpoint stopped inside a gradient-accumulation group that this run cannot "
                         "continue: its partial gradients are dropped (not bit-identical)")
            self.grads_pending = False
            return
        for param, grad in zip(params, grads, strict=True):
            param.grad = None if grad is None else grad.to(param.device)

    def save(self, epoch: int, is_best: bool) -> None:
        """The end-of-epoch checkpoint (and ``model_best`` when ``is_best``); all ranks call it."""
        self.saved.write(self.checkpoint(epoch), is_best)

    def save_position(self, epoch: int, step: int, meter: Meter) -> None:
        """A checkpoint inside ``epoch`` after ``step`` of its steps (never after a NaN loss)."""
        self.check_loss(epoch, meter)
        self.saved.write(self.checkpoint(epoch, step, meter), is_best=False)

    # -- the run ------------------------------------------------------------------------------
    def _best_note(self) -> str:
        return " (EMA weights: idml eval --ema)" if self.ema is not None and self.best_weights == "ema" else ""

    def fit(self) -> tuple[float, float]:
        """Train from ``self.start`` to ``cfg.epochs``; returns the best (top-1, top-5) error of the
        selection set (the test split under the official protocol, else the validation split)."""
        held_out = self.data.held_out
        with self.stopping.handling_signals():
            for epoch in range(self.start.epoch, self.cfg.epochs):
                train = self.train_epoch(epoch)
                kept: list[tuple[Tensor, Tensor]] | None = [] if held_out else None
                val = self.validate(epoch, keep=kept) if held_out else self.validate(epoch)  # official: as ever
                self.check_validation(epoch, val)
                ema_kept: list[tuple[Tensor, Tensor]] | None = [] if held_out else None
                ema_val = self.validate(epoch, ema=True, keep=ema_kept) if self.ema is not None else None
                best, weights = (ema_val, "ema") if ema_val and ema_val.top1_err < val.top1_err else (val, "model")
                # the test split and the temperature: with the weights that scored best this epoch
                test = self.validate(epoch, ema=weights == "ema", split="test") if held_out else None
                is_best = best.top1_err <= self.best_err1  # a tie: the later epoch, as the official code
                self.log.epoch_end(epoch, self.optimizer.param_groups[0]["lr"], train, val, test, best=is_best)
                self.best_err1 = min(best.top1_err, self.best_err1)
                if is_best:
                    self.best_err5, self.best_weights, self.best_epoch = best.top5_err, weights, epoch
                if test is not None and kept is not None and ema_kept is not None:
                    fitted = self.fit_temperature(ema_kept if weights == "ema" else kept)
                    self.temperature = fitted.value
                    self.test_at_last = test_record(epoch, test)
                    if is_best:
                        self.test_at_best, self.best_temperature = self.test_at_last, fitted
                self.print_best("Current best")
                self.save(epoch, is_best)
                stop = self.stopping.stop_requested()
                if stop is not None and epoch + 1 < self.cfg.epochs:
                    raise self._stopped(stop)
        self.log.close()
        self.print_best("Best")
        return self.best_err1, self.best_err5

    def print_best(self, prefix: str) -> None:
        """After each epoch (``prefix`` "Current best") and at the end ("Best"): the official line
        in the official code's runs, else idml's lines (errors in percent; the test errors at the
        best and last epochs and the best model's temperature with --val_split)."""
        if self.official_console:
            self.print(f"{prefix} accuracy (top-1 and 5 error): {self.best_err1} {self.best_err5}{self._best_note()}")
            return
        held_out = self.data.held_out
        epoch = "" if self.best_epoch is None else f"epoch {self.best_epoch}, "
        line = f"{prefix}: {epoch}{'validation' if held_out else 'test'} {self._errors(self.best_err1, self.best_err5)}"
        if prefix != "Best":  # one line per epoch
            at_best = self.test_at_best
            test = f"; test {self._errors(at_best['top1_err'], at_best['top5_err'])}" if held_out and at_best else ""
            self.print(f"{line}{test}{self._best_note()}")
            return
        self.print(f"{line}{self._best_note()}")
        for when, record in (("the best validation epoch", self.test_at_best), ("the last epoch", self.test_at_last)):
            if record is not None:
                errors = self._errors(record["top1_err"], record["top5_err"])
                self.print(f"  test at {when} ({record['epoch']}): {errors}")
        if held_out:
            self.print(f"  softmax temperature of the best model (fitted on the validation split): "
                       f"{self.best_temperature.describe()}")

    def _errors(self, top1: float, top5: float) -> str:
        """idml's way to show errors: percent, 2 decimals, top-5 only with more than 5 classes."""
        return f"error {top1:.2f} %" + self._top5(f" (top-5 {top5:.2f} %)")


def test_record(epoch: int, result: EpochResult) -> dict[str, float]:
    """What the checkpoint keeps of a test-split evaluation (plain types: weights_only loads it)."""
    return {"epoch": epoch, "top1_err": result.top1_err, "top5_err": result.top5_err, "loss": result.loss}
