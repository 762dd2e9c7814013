"""Training and evaluation loops (mixed precision, channels_last, DDP-aware).

One obvious flow: :class:`Trainer` owns the model, optimiser, data and runtime of a run;
``fit`` alternates ``train_epoch`` and ``evaluate`` and writes checkpoints, printing the official
code's console lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from idml.checkpoint import BEST_NAME, CHECKPOINT_NAME, atomic_save
from idml.config import TrainConfig
from idml.data import DataBundle
from idml.distributed import broadcast_buffers, run_agreed
from idml.errors import RunStopped
from idml.guard import CHECK_EVERY, LossWatch
from idml.interrupt import StepControl
from idml.logs import RunLog
from idml.mixing import MixedBatch, mix_batch, mixed_cross_entropy
from idml.resume import ResumePoint, progress_fields
from idml.runtime import Runtime

Printer = Callable[[str], None]


def learning_rate(base_lr: float, dataset: str, epoch: int, epochs: int) -> float:
    """The official step schedules, for epoch ``epoch`` (counted from 0) of ``epochs``.

    CIFAR-style data: x0.1 from epoch E/2 and again from 3E/4. ImageNet: x0.1 every 75 epochs
    when E == 300, every 30 epochs otherwise.
    """
    if dataset == "imagenet":
        period = 75 if epochs == 300 else 30
        return base_lr * 0.1 ** (epoch // period)
    return base_lr * 0.1 ** (epoch >= epochs * 0.5) * 0.1 ** (epoch >= epochs * 0.75)


def step_rng(seed: int, epoch: int, step: int, rank: int) -> np.random.Generator:
    """The random stream of one training step: reproducible from its position alone."""
    return np.random.default_rng([seed, epoch, step, rank])


def topk_correct(logits: Tensor, targets: Tensor, ks: tuple[int, ...]) -> Tensor:
    """How many targets are within the top-k predictions, for each k (a tensor, no sync)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == targets.unsqueeze(1)
    return torch.stack([hits[:, :k].sum() for k in ks])


class Meter:
    """Sums of loss and top-1/top-5 hits kept on the device; read (one sync) only when printed."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*n, hits1, hits5, n
        self.last = self.sums.clone()

    def update(self, loss: Tensor, logits: Tensor, targets: Tensor) -> None:
        n = targets.shape[0]
        hits = topk_correct(logits.detach(), targets, (1, 5))
        self.last = torch.cat([loss.detach().double().view(1) * n, hits.double(), self.sums.new_tensor([n])])
        self.sums += self.last

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)

    @staticmethod
    def _summary(sums: Tensor) -> tuple[float, float, float]:
        loss_sum, hits1, hits5, n = sums.tolist()
        n = max(n, 1.0)
        return loss_sum / n, 100.0 * (1 - hits1 / n), 100.0 * (1 - hits5 / n)

    def average(self) -> tuple[float, float, float]:
        """(loss, top-1 error %, top-5 error %) over everything seen."""
        return self._summary(self.sums)

    def current(self) -> tuple[float, float, float]:
        return self._summary(self.last)


@dataclass
class EpochResult:
    loss: float
    top1_err: float
    top5_err: float
    images: int
    seconds: float


class Trainer:
    def __init__(
        self, cfg: TrainConfig, model: nn.Module, data: DataBundle, runtime: Runtime,
        printer: Printer = print,
    ) -> None:
        self.cfg, self.data, self.rt = cfg, data, runtime
        self.model = model  # the plain module: what checkpoints hold
        self.net = model  # what runs the steps: possibly compiled and/or DDP-wrapped
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            nesterov=cfg.momentum > 0,
        )
        self.scaler = runtime.grad_scaler()
        self.print = printer if runtime.is_main else (lambda _msg: None)
        self.log = RunLog(cfg.run_dir, self.print, is_main=runtime.is_main, verbose=cfg.verbose,
                          tensorboard=cfg.tensorboard, world_size=runtime.world_size)
        self.start_epoch = 0
        self.resume_at = ResumePoint()  # set by resume.restore_training
        self.control = StepControl(runtime)
        self.watch = LossWatch(runtime.device, runtime.distributed)
        self.best_err1, self.best_err5 = 100.0, 100.0

    # -- one step -----------------------------------------------------------------------------
    def _to_device(self, images: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        return (images.to(self.rt.device, non_blocking=True), targets.to(self.rt.device, non_blocking=True))

    def _format(self, images: Tensor) -> Tensor:
        if self.rt.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    def prepare_batch(self, images: Tensor, targets: Tensor, rng: np.random.Generator) -> MixedBatch:
        """The input pipeline of a step on the device: augmentation, memory format, CutMix/Mixup."""
        images = self._format(self.data.train_transform(images, rng))
        return mix_batch(images, targets, self.cfg.mix, rng)

    def train_step(self, images: Tensor, targets: Tensor, rng: np.random.Generator, meter: Meter) -> None:
        batch = self.prepare_batch(images, targets, rng)
        with self.rt.autocast():
            out = self.net(batch.images)
        loss = mixed_cross_entropy(out.train_logits, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        meter.update(loss, out.train_logits, targets)

    # -- epochs -------------------------------------------------------------------------------
    def set_lr(self, epoch: int) -> float:
        lr = learning_rate(self.cfg.lr, self.cfg.dataset.lower(), epoch, self.cfg.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _epoch_start(self, epoch: int) -> tuple[int, Meter]:
        """The first step to run in ``epoch`` and its meter (both from the checkpoint on resume)."""
        first = self.resume_at.step if epoch == self.resume_at.epoch else 0
        self.data.train.set_epoch(epoch, first)
        meter = Meter(self.rt.device)
        if first and self.resume_at.train_sums is not None:
            meter.sums = self.resume_at.train_sums.clone()
        return first, meter

    def _after_step(self, epoch: int, step: int, steps: int, meter: Meter) -> None:
        """Watch the loss for NaN/inf and write the ``--save_every_steps`` checkpoints."""
        self.watch.observe(meter.last[0], epoch, step)
        done, every = step + 1, self.cfg.save_every_steps
        if every and done % every == 0 and done < steps:
            self.save_position(epoch, done, meter)
        elif done % CHECK_EVERY == 0:
            self.watch.check()

    def _stop_at(self, epoch: int, meter: Meter, step: int) -> None:
        """A stop signal arrived: checkpoint "``step`` steps of ``epoch`` done" and stop."""
        self.save_position(epoch, step, meter)
        self._raise_stopped()

    def _raise_stopped(self) -> None:
        signum = self.control.agreed_signal
        raise RunStopped(
            f"stopped by signal {signum}; saved {self.watch.last_saved}: continue with the same "
            "command plus --resume auto", 128 + signum,
        )

    def train_epoch(self, epoch: int) -> EpochResult:
        cfg = self.cfg
        lr = self.set_lr(epoch)
        self.net.train()
        first, meter = self._epoch_start(epoch)
        steps = first + len(self.data.train)
        start = last = time.perf_counter()
        images_seen = 0
        batches = self.control.batches(self.data.train, partial(self._stop_at, epoch, meter), first)
        batches = self.log.batches(batches, f"Epoch {epoch}/{cfg.epochs}", steps, first)
        for step, (images, targets) in enumerate(batches, start=first):
            data_time = time.perf_counter() - last
            images, targets = self._to_device(images, targets)
            self.train_step(images, targets, step_rng(cfg.seed, epoch, step, self.rt.rank), meter)
            self._after_step(epoch, step, steps, meter)
            images_seen += targets.shape[0]
            if cfg.verbose and step % cfg.print_freq == 0:
                loss, e1, e5 = meter.current()
                avg_loss, a1, a5 = meter.average()
                now = time.perf_counter()
                self.log.step(
                    f"Epoch: [{epoch}/{cfg.epochs}][{step}/{steps}]\tLR: {lr:.6f}\t"
                    f"Time {now - last:.3f} ({(now - start) / (step + 1 - first):.3f})\tData {data_time:.3f}\t"
                    f"Loss {loss:.4f} ({avg_loss:.4f})\tTop 1-err {e1:.4f} ({a1:.4f})\t"
                    f"Top 5-err {e5:.4f} ({a5:.4f})", loss=avg_loss, top1_err=a1,
                )
            last = time.perf_counter()
        meter.all_reduce()
        loss, e1, e5 = meter.average()
        result = EpochResult(loss, e1, e5, images_seen, time.perf_counter() - start)
        self.print(
            f"* Epoch: [{epoch}/{cfg.epochs}]\t Top 1-err {e1:.3f}  Top 5-err {e5:.3f}\t Train Loss {loss:.3f}"
        )
        return result

    @torch.inference_mode()
    def evaluate(self, epoch: int) -> EpochResult:
        """Top-1/top-5 error of the plain logits over the whole validation set (all ranks)."""
        model = self.model if self.rt.distributed else self.net
        broadcast_buffers(self.model, self.rt)
        model.eval()
        meter = Meter(self.rt.device)
        start = time.perf_counter()
        steps = len(self.data.val)
        batches = self.log.batches(self.control.batches(self.data.val), f"Test {epoch}/{self.cfg.epochs}", steps)
        for step, (images, targets) in enumerate(batches):
            images, targets = self._to_device(images, targets)
            with self.rt.autocast():
                logits = model(self._format(self.data.eval_transform(images))).logits
            loss = nn.functional.cross_entropy(logits.float(), targets)
            meter.update(loss, logits, targets)
            if self.cfg.verbose and step % self.cfg.print_freq == 0:
                _, e1, e5 = meter.current()
                self.log.step(f"Test (on val set): [{epoch}/{self.cfg.epochs}][{step}/{steps}]\t"
                              f"Top 1-err {e1:.4f}\tTop 5-err {e5:.4f}", batch_top1_err=e1)
        meter.all_reduce()
        loss, e1, e5 = meter.average()
        images = int(meter.sums[3].item())
        self.print(
            f"* Epoch: [{epoch}/{self.cfg.epochs}]\t Top 1-err {e1:.3f}  Top 5-err {e5:.3f}\t Test Loss {loss:.3f}"
        )
        return EpochResult(loss, e1, e5, images, time.perf_counter() - start)

    # -- the run ------------------------------------------------------------------------------
    def state(self, epoch: int) -> dict:
        """Everything a checkpoint holds (plain types only: loadable with weights_only=True)."""
        spec = self.cfg.model_spec.to_dict() | {"num_classes": self.data.num_classes}
        return {
            "epoch": epoch + 1,
            "arch": self.cfg.net_type,
            "model": spec,
            "state_dict": self.model.state_dict(),
            "best_err1": self.best_err1,
            "best_err5": self.best_err5,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": self.cfg.to_dict(),
            "class_names": list(self.data.class_names),
            "mean": list(self.data.mean),
            "std": list(self.data.std),
            "input_size": self.data.input_size,
        }

    def save(self, epoch: int, is_best: bool) -> None:
        """The end-of-epoch checkpoint (and ``model_best`` when ``is_best``); all ranks call it."""
        self._write(self.state(epoch), is_best, step=0, meter=None)

    def save_position(self, epoch: int, step: int, meter: Meter) -> None:
        """A checkpoint inside ``epoch`` after ``step`` of its steps (never of a NaN loss)."""
        self.watch.check()
        self._write(self.state(epoch) | {"epoch": epoch}, False, step, meter)

    def _write(self, state: dict, is_best: bool, step: int, meter: Meter | None) -> None:
        state |= progress_fields(self.rt, self.cfg.batch_size, step, None if meter is None else meter.sums)
        path = self.cfg.run_dir / CHECKPOINT_NAME

        def write() -> None:
            if self.rt.is_main:
                atomic_save(state, path)
                if is_best:
                    atomic_save(state, self.cfg.run_dir / BEST_NAME)

        run_agreed(write, self.rt)
        self.watch.last_saved = f"{path} (resumes at epoch {state['epoch']}, step {step})"

    def fit(self) -> tuple[float, float]:
        with self.control.handling_signals():
            return self._fit()

    def _fit(self) -> tuple[float, float]:
        for epoch in range(self.start_epoch, self.cfg.epochs):
            train = self.train_epoch(epoch)
            self.watch.check()
            val = self.evaluate(epoch)
            self.log.epoch_end(epoch, self.optimizer.param_groups[0]["lr"], train, val)
            is_best = val.top1_err <= self.best_err1
            self.best_err1 = min(val.top1_err, self.best_err1)
            if is_best:
                self.best_err5 = val.top5_err
            self.print(f"Current best accuracy (top-1 and 5 error): {self.best_err1} {self.best_err5}")
            self.save(epoch, is_best)
            if self.control.stop_signal() and epoch + 1 < self.cfg.epochs:
                self._raise_stopped()
        self.log.close()
        self.print(f"Best accuracy (top-1 and 5 error): {self.best_err1} {self.best_err5}")
        return self.best_err1, self.best_err5
