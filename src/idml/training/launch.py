"""``idml train --devices N``: every device of a node from one plain command.

The official code spread its batch over all visible GPUs with ``nn.DataParallel``; its README runs
``python train.py ... --batch_size 256`` "with 4 GPUs". Started the same way, idml starts one DDP
process per device itself, with PyTorch's own launcher: the elastic agent that ``torchrun
--standalone`` runs (:func:`torch.distributed.launcher.api.elastic_launch`). Each process is
``idml train`` with the same arguments and ``--batch_size`` replaced by its share, exactly as if the
user had typed ``torchrun --standalone --nproc_per_node N train.py ... --batch_size B/N``: so the
weights are those of that torchrun run, and stop signals, ``--resume auto``, the run lock, errors
and exit statuses behave as under torchrun. Under torchrun (``WORLD_SIZE`` set) nothing is launched.

The agent forwards SIGTERM, SIGINT, SIGHUP, SIGQUIT and ``--stop_signal`` to the processes (which
run in sessions of their own, so a terminal's Ctrl-C reaches them once, through it), waits for them
to write their checkpoint, and this process exits with the status they stopped with.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from idml.config import TrainConfig
from idml.errors import ConfigError

#: what the agent forwards besides --stop_signal (torchrun's own default list)
FORWARDED_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
#: seconds the agent gives stopped processes to finish their step and checkpoint before SIGKILL
#: (torchrun's default is 30; a validation pass in flight on a large dataset can take longer)
SHUTDOWN_TIMEOUT_S = 120


@dataclass(frozen=True)
class LaunchPlan:
    """How many processes ``idml train`` runs, on what, and each one's ``--batch_size``."""

    processes: int
    per_process_batch: int
    device: str = "cpu"  # "cuda" or "cpu": what each process trains on

    def describe(self, total_batch: int) -> str:
        where = "one per CUDA GPU" if self.device == "cuda" else "Gloo processes on the CPU"
        return (f"=> {self.processes} DDP processes, {where}: --batch_size {total_batch} is the total batch, "
                f"{self.per_process_batch} per process (--devices 1 for a single process)")


def under_launcher() -> bool:
    """Whether torchrun (or another launcher that sets the DDP environment) started this process."""
    return "WORLD_SIZE" in os.environ or "RANK" in os.environ


def device_kind(device: str) -> str:
    """``--device`` resolved to cuda, mps or cpu, without touching a GPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return device


def plan_launch(cfg: TrainConfig, cuda_devices: Callable[[], int] | None = None) -> LaunchPlan:
    """The processes ``idml train`` starts for ``--devices``: 1 (train here) or one per device.

    Refuses, with one line, more devices than are visible, several processes on MPS, and a total
    batch that does not split evenly."""
    if under_launcher():
        return LaunchPlan(1, cfg.batch_size)
    kind, asked = device_kind(cfg.device), cfg.processes_requested
    if kind == "cuda":
        visible = (cuda_devices or torch.cuda.device_count)()
        if asked is not None and asked > visible:
            raise ConfigError(f"--devices {asked}: only {visible} CUDA GPU(s) are visible; give --devices "
                              f"{visible} or fewer, or auto")
        processes = visible if asked is None else asked
    elif kind == "mps" and (asked or 1) > 1:
        raise ConfigError(f"--devices {asked}: Apple's MPS is one device; several processes need CUDA GPUs, or "
                          "--device cpu for Gloo processes")
    else:
        processes = asked or 1
    processes = max(processes, 1)
    if cfg.batch_size % processes:
        raise ConfigError(f"--batch_size {cfg.batch_size} does not split evenly over {processes} processes "
                          f"(--devices {cfg.devices}): give a multiple of {processes}; it is the total batch here")
    return LaunchPlan(processes, cfg.batch_size // processes, "cuda" if kind == "cuda" else "cpu")


def run_processes(argv: list[str], plan: LaunchPlan, stop_signal: str) -> tuple[int, str]:
    """Run ``idml train ARGV --batch_size <share>`` in ``plan.processes`` DDP processes: their exit
    status, and a line to print where the processes could not say what happened (else "")."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    signals = ",".join(dict.fromkeys([*FORWARDED_SIGNALS, f"SIG{stop_signal}"]))
    # torch releases before the shutdown_timeout field keep torchrun's 30 s
    longer = {"shutdown_timeout": SHUTDOWN_TIMEOUT_S} if "shutdown_timeout" in LaunchConfig.__dataclass_fields__ else {}
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=plan.processes, run_id=f"idml-{uuid.uuid4()}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          signals_to_handle=signals, **longer)
    args = ("-u", "-m", "idml", "train", *argv, "--batch_size", str(plan.per_process_batch))
    with _launch_environment(plan.processes, signals):
        try:
            elastic_launch(config, sys.executable)(*args)
        except ChildFailedError as exc:
            return exit_status({rank: failure.exitcode for rank, failure in exc.failures.items()})
        except SignalException as exc:
            return 128 + int(exc.sigval), ""
    return 0, ""


def exit_status(codes: dict[int, int]) -> tuple[int, str]:
    """The status of a launch whose processes ended with ``codes`` (rank -> status; -N = killed by
    signal N), and the line that explains it where no process could.

    A process killed by a signal other than the SIGTERM the agent sends to the others when one fails
    (the OOM killer's SIGKILL, a crash) is the cause: the line names it. Otherwise the processes
    printed their own line (an error: 2; a bug's traceback: 1; a clean stop: 128 + signal)."""
    killed = {rank: -code for rank, code in codes.items() if code < 0 and -code != signal.SIGTERM}
    if killed:
        rank, signum = min(killed.items())
        return 128 + signum, (f"the process of rank {rank} was killed by {signal.Signals(signum).name}; the others "
                              "were stopped: continue from the last checkpoint with --resume auto")
    for status in (1, 2):
        if status in codes.values():
            return status, ""
    return max(code if code >= 0 else 128 - code for code in codes.values()), ""


@contextlib.contextmanager
def _launch_environment(processes: int, signals: str) -> Iterator[None]:
    """What the processes inherit, set for the launch only and put back after it (as are the signal
    handlers and the log level the agent changes): this package importable by a fresh interpreter
    (a source checkout run as ``python train.py``), and one OpenMP thread each unless
    OMP_NUM_THREADS says otherwise, as torchrun does for several processes."""
    saved_env = dict(os.environ)
    handled = [getattr(signal, name) for name in signals.split(",")]
    saved_handlers = {sig: signal.getsignal(sig) for sig in handled}
    package_root = str(Path(__file__).resolve().parents[2])
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    if processes > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.disable(logging.ERROR)  # the processes print idml's own lines; the agent's would repeat them
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in saved_handlers.items():
            signal.signal(sig, handler)
        logging.disable(logging.NOTSET)
