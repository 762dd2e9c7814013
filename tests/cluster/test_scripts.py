"""The SLURM scripts of examples/slurm/: they parse (bash -n), pass shellcheck, run the official
ImageNet command, and their stop-and-requeue logic works with a stand-in for srun and scontrol (no
SLURM needed; the real thing: test_slurm.py)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from idml.config import parse_train_args
from runs import REPO, load, subprocess_env, tiny_cifar

SLURM = REPO / "examples" / "slurm"
SCRIPTS = sorted([*SLURM.glob("*.sh"), *SLURM.glob("*.sbatch")])
IMAGENET = [SLURM / "imagenet-1node-8gpu.sbatch", SLURM / "imagenet-nodes-8gpu.sbatch"]


def test_the_scripts_are_there() -> None:
    names = {path.name for path in SCRIPTS}
    assert {"run.sh", "local-cluster.sh", "cpu-gloo.sbatch", *(p.name for p in IMAGENET)} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_parses_the_script(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_shellcheck_finds_nothing() -> None:
    """shellcheck on every script; CI installs it (apt-get install shellcheck), elsewhere it may be absent."""
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("shellcheck is not installed, and CI must run this test: apt-get install -y shellcheck")
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    proc = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def sbatch_options(script: Path) -> list[str]:
    return [line.split(None, 1)[1] for line in script.read_text().splitlines() if line.startswith("#SBATCH ")]


def train_command(script: Path) -> list[str]:
    """The train.py arguments a script hands to run.sh (its variables at their defaults)."""
    text = script.read_text().split('/examples/slurm/run.sh"', 1)[1].replace("\\\n", " ")
    text = re.sub(r'"\$\{IDML_\w+:-([^}]*)\}"', r"\1", text.splitlines()[0])
    text = re.sub(r"\$\(\(total_batch / processes\)\)", "16", text)  # 256 / (8 GPUs x 2 nodes)
    return shlex.split(text)[1:]


@pytest.mark.parametrize("script", IMAGENET, ids=lambda p: p.name)
def test_the_imagenet_scripts_run_the_official_command_with_256_images_per_step(script: Path) -> None:
    options = sbatch_options(script)
    assert "--signal=B:USR1@120" in options and "--requeue" in options and "--gpus-per-node=8" in options
    argv = train_command(script)
    cfg = parse_train_args(argv)
    official = parse_train_args(["--config", str(REPO / "configs" / "official" / "imagenet_idml_cutmix.yaml")])
    nodes = int(next(o.split("=")[1] for o in options if o.startswith("--nodes=")))
    assert cfg.batch_size * 8 * nodes == official.batch_size == 256
    runtime = {"batch_size", "expname", "workers", "resume", "save_every_steps", "data_dir", "output_dir"}
    differ = {k for k, v in cfg.to_dict().items() if official.to_dict()[k] != v}
    assert differ <= runtime, differ
    assert cfg.resume == "auto" and cfg.save_every_steps > 0


def test_the_cpu_script_warns_with_the_signal_idml_stops_on() -> None:
    assert "--signal=B:USR1@60" in sbatch_options(SLURM / "cpu-gloo.sbatch")
    assert parse_train_args([]).stop_signal == "USR1"


# -- the stop and requeue logic, with stand-ins for srun and scontrol ------------------------------
def fake_slurm(folder: Path) -> Path:
    """``srun`` that runs its command here (the signal it receives goes to that command, as srun
    forwards it) and ``scontrol`` that names this host and logs a requeue."""
    folder.mkdir()
    (folder / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
    (folder / "scontrol").write_text('#!/usr/bin/env bash\nif [[ "$1" == show ]]; then echo localhost; '
                                     'else echo "$*" >> "$FAKE_SLURM_LOG"; fi\n')
    for tool in ("srun", "scontrol"):
        (folder / tool).chmod(0o755)
    return folder


@pytest.mark.slow
def test_the_warning_signal_checkpoints_and_requeues_the_job(tmp_path: Path) -> None:
    tiny_cifar(tmp_path / "data")
    bin_dir = fake_slurm(tmp_path / "bin")
    env = subprocess_env() | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM_LOG": str(tmp_path / "slurm.log"),
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_NUM_NODES": "1",
        "SLURM_SUBMIT_DIR": str(REPO), "IDML_PYTHON": sys.executable,
        "IDML_OUTPUT_DIR": str(tmp_path / "runs"), "IDML_EPOCHS": "2", "IDML_DEPTH": "8",
        "IDML_ARGS": f"--dataset cifar10 --data_dir {tmp_path / 'data'} --batch_size 8",
    }
    proc = subprocess.Popen(["bash", str(SLURM / "cpu-gloo.sbatch")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("Epoch: [0/2][3/"):
            proc.send_signal(signal.SIGUSR1)  # what sbatch --signal=B:USR1@60 sends to the batch shell
            break
    out = "".join(lines) + proc.communicate(timeout=300)[0]
    assert "idml: SIGUSR1 received" in out and "idml train: stopped by signal 10" in out, out[-3000:]
    assert (tmp_path / "slurm.log").read_text() == "requeue 4242\n"
    stopped = load(tmp_path / "runs" / "digits" / "checkpoint.pth.tar")
    assert (stopped["epoch"], stopped["step"]) < (2, 0) and len(stopped["ranks"]) == 2
