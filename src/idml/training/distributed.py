"""PyTorch DDP set-up for runs launched by ``torchrun`` (which sets RANK, WORLD_SIZE, ...).

Besides the process group that carries the gradients (NCCL on GPUs, Gloo on CPUs) there is a
small Gloo group for control messages (stop requests, errors), so that those never wait on, or
force a sync with, the GPU.

Both groups wait at most ``--dist_timeout`` seconds (default 600) for a silent peer, instead of
torch's 30 minutes. The longest legitimate silence is rank 0 writing a checkpoint (and its best
model) while the others wait at the next collective: seconds for CIFAR networks, up to a minute or
two for an ImageNet model on a slow network disk; 600 s leaves a wide margin and still reports a
stalled peer ten minutes after it stopped. A peer that was killed is reported at once (its socket
closes). Either way every surviving process stops with one line (:func:`peer_failures_reported`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from idml.device.runtime import Runtime
from idml.errors import AgreedError, ConfigError, IdmlError, exit_without_interruption, one_line
from idml.training.rendezvous import generation_store

T = TypeVar("T")
_control: dict[str, dist.ProcessGroup | None] = {"group": None}


def init_distributed(rt: Runtime, timeout_s: float = 600.0) -> None:
    """Join the process group torchrun prepared: NCCL on GPUs, Gloo on CPUs; collectives give up
    after ``timeout_s`` seconds without an answer."""
    if rt.distributed and not dist.is_initialized():
        if rt.device.type == "cuda":
            torch.cuda.set_device(rt.device)
        backend = "nccl" if rt.device.type == "cuda" else "gloo"
        timeout = timedelta(seconds=timeout_s)
        with peer_failures_reported(rt, timeout_s):
            store = generation_store(rt.rank, rt.world_size, timeout)  # None: the usual env:// rendezvous
            joined = {} if store is None else {"store": store, "rank": rt.rank, "world_size": rt.world_size}
            dist.init_process_group(backend=backend, timeout=timeout, **joined)
            _control["group"] = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None


#: Words of the errors Gloo, NCCL and the TCP store raise when a peer is gone or silent.
_PEER_FAILURE_MARKERS = ("gloo", "nccl", "connection reset", "connection closed", "connection refused",
                         "timed out", "timeout", "broken pipe", "socket")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another process died or went silent."""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in _PEER_FAILURE_MARKERS)


def _short_reason(exc: BaseException) -> str:
    """The backend's own words, without its source path and advice: "Connection reset by peer"."""
    text = one_line(exc)
    if text.startswith("[") and "] " in text:  # "[.../gloo/transport/tcp/pair.cc:545] Read error ..."
        text = text.split("] ", 1)[1]
    return text.split(". ")[0][:160]


@contextlib.contextmanager
def peer_failures_reported(rt: Runtime, timeout_s: float) -> Iterator[None]:
    """Turn a collective's failure (a peer killed, crashed or silent for ``timeout_s``) into one line.

    Only under DDP: a single process has no peers, and its errors keep their own treatment.
    """
    try:
        yield
    except (RuntimeError, dist.DistError) as exc:
        if not (rt.distributed and is_peer_failure(exc)) or isinstance(exc, IdmlError):
            raise
        raise IdmlError(
            f"another process of this run stopped answering (killed, crashed, or silent for more than "
            f"--dist_timeout {timeout_s:g} s): {_short_reason(exc)}; continue from the last checkpoint with "
            "--resume auto"
        ) from exc


def control_group() -> dist.ProcessGroup | None:
    """The Gloo group for CPU control messages (None = the default group, already Gloo)."""
    return _control["group"]


def agree_on_memory_format(rt: Runtime) -> Runtime:
    """Every rank takes rank 0's memory format.

    DDP needs each parameter in the same layout on every rank, and the default format depends on
    the precision each node resolved for itself (``--amp auto`` reads its own CPU's flags), so nodes
    of different CPUs could choose differently.
    """
    if not rt.distributed:
        return rt
    choice = [rt.channels_last]
    dist.broadcast_object_list(choice, src=0, group=control_group())
    return dataclasses.replace(rt, channels_last=bool(choice[0]))


def convert_sync_bn(model: nn.Module, rt: Runtime, enabled: bool) -> nn.Module:
    """``--sync_bn``: BatchNorm statistics over all processes (needs GPUs; no-op on one process).

    PyTorch's SyncBatchNorm reads the gathered batch sizes back to the host in every BatchNorm
    layer of every forward pass: one synchronisation per layer (see docs/gpu.md).
    """
    if not (enabled and rt.distributed):
        return model
    if rt.device.type != "cuda":
        raise ConfigError("--sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm does not run on the CPU)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_ddp(model: nn.Module, rt: Runtime) -> nn.Module:
    """DDP whose gradients are views into its communication buckets (no copy in and out of them)."""
    if not rt.distributed:
        return model
    device_ids = [rt.device.index] if rt.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, gradient_as_bucket_view=True)


def broadcast_buffers(model: nn.Module, rt: Runtime) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    Each rank's last training forward updated its own statistics from its own shard; evaluating
    with those would score the validation shards with slightly different models. After this,
    every rank evaluates exactly the model that rank 0 checkpoints.
    """
    if rt.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def gather_rows(array: np.ndarray, rt: Runtime) -> np.ndarray:
    """Every rank's ``array`` stacked along the first axis, in rank order, on every rank (once per
    epoch, for the few validation logits that fit a temperature: the control group suffices)."""
    if not rt.distributed:
        return array
    parts: list[np.ndarray | None] = [None] * rt.world_size
    dist.all_gather_object(parts, array, group=control_group())
    return np.concatenate([p for p in parts if p is not None])


def share_failure(failure: Exception | None, rt: Runtime) -> None:
    """Every rank calls this; if any rank failed, every rank raises (rank 0 prints the message).

    The failing rank re-raises its own exception when it is not a user error (a bug keeps its
    traceback); the others raise :class:`AgreedError` naming the failing rank.
    """
    if not rt.distributed:
        if failure is not None:
            raise failure
        return
    messages: list[str | None] = [None] * rt.world_size
    mine = None if failure is None else one_line(failure)
    if failure is not None and not isinstance(failure, IdmlError):
        mine = f"{type(failure).__name__}: {mine}"
    dist.all_gather_object(messages, mine, group=control_group())
    failed = [(rank, text) for rank, text in enumerate(messages) if text is not None]
    if not failed:
        return
    exit_without_interruption()
    if failure is not None and not isinstance(failure, IdmlError):
        raise failure
    rank, text = failed[0]
    raise AgreedError(f"rank {rank}: {text}")


def run_agreed(action: Callable[[], T], rt: Runtime) -> T:
    """Run ``action`` on every rank; if it fails on any, all fail with that one-line error."""
    try:
        result = action()
    except Exception as exc:
        share_failure(exc, rt)
        raise
    share_failure(None, rt)
    return result


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _control["group"] = None
