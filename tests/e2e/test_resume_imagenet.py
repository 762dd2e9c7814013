"""Exact resume on the ImageNet layout (the header-first, reduced-scale CPU pipeline), with and
without --skip_bad_images: stopped by SIGTERM inside an epoch and resumed, a run ends bitwise
equal to the uninterrupted one."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

import fake_data
from expect import one_error_line
from runs import assert_same_weights, load, one_thread, run_cli, signal_at  # noqa: F401 - autouse fixture

#: ResNet-18 on 224x224 crops of 12 training images in batches of 4: 3 steps an epoch
IMAGENET = ["--dataset", "imagenet", "--net_type", "resnet", "--depth", "18", "--batch_size", "4",
            "--device", "cpu", "--amp", "off", "--workers", "0", "--lr", "0.05", "--epochs", "2", "--no-verbose"]


@pytest.mark.slow
@pytest.mark.parametrize("skip_bad", [False, True])
def test_imagenet_run_stopped_inside_an_epoch_resumes_exactly(tmp_path: Path, monkeypatch, capsys,
                                                             skip_bad: bool) -> None:
    fake_data.make_imagenet(tmp_path / "data", size=(300, 240))
    extra = []
    if skip_bad:
        victim = sorted((tmp_path / "data" / "imagenet-1k" / "train" / "n01443537").iterdir())[1]
        victim.write_bytes(victim.read_bytes()[:200])
        extra = ["--skip_bad_images"]
    args = [*IMAGENET, *extra, "--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "runs")]
    code, _, err = run_cli([*args, "--expname", "ref"], capsys)
    assert code == 0, err
    assert ("skipped unreadable image" in err) == skip_bad

    signal_at(monkeypatch, signal.SIGTERM, 1, 1)
    code, _, err = run_cli([*args, "--expname", "run"], capsys)
    lines = [line for line in err.splitlines() if not line.startswith("idml: warning: skipped")]
    one_error_line("\n".join(lines), "--resume auto", code=code, expected_code=143)
    stopped = load(tmp_path / "runs" / "run" / "checkpoint.pth.tar")
    assert (stopped["epoch"], stopped["step"]) == (1, 2)
    monkeypatch.undo()
    code, _, err = run_cli([*args, "--expname", "run", "--resume", "auto"], capsys)
    assert code == 0, err
    assert_same_weights(load(tmp_path / "runs" / "run" / "checkpoint.pth.tar"),
                        load(tmp_path / "runs" / "ref" / "checkpoint.pth.tar"))
