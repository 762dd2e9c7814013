"""A CPU run's memory format timed at its start (idml.training.format_trial): the run trains exactly as
one given the chosen format by flag, a resumed run keeps its checkpoint's format, a flag still forces."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from idml.config import parse_train_args
from idml.data.build import build_data
from idml.data.types import DataRequest
from idml.device import autotune
from idml.device.runtime import Runtime
from idml.training import format_trial
from idml.training.trainer import Trainer
from runs import (
    assert_same_weights,
    load,
    one_thread,  # noqa: F401 - autouse fixture
    run_cli,
    tiny_cifar,
    train_args,
)

CPU = torch.device("cpu")
QUIET = ["--epochs", "1", "--no-verbose"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cifar(tmp_path_factory.mktemp("data"))


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test starts without a cached choice, so its first run times (the suite's runs do not
    time: tests/conftest.py; these do)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(format_trial.TRIAL_VARIABLE, raising=False)
    return tmp_path / "cache" / "idml" / "memory_format.json"


def winner(monkeypatch: pytest.MonkeyPatch, channels_last: bool) -> list:
    """Run the real timing (its scratch steps included), then declare ``channels_last`` the winner,
    so that both outcomes are tested whatever this machine measures. Returns the timings made."""
    made: list = []
    real = autotune.time_formats

    def decided(*args, **kwargs):
        timing = real(*args, **kwargs)
        timing.channels_last = channels_last
        made.append(timing)
        return timing

    monkeypatch.setattr(autotune, "time_formats", decided)
    return made


def assert_same_random_states(a: dict, b: dict) -> None:
    """The global random states every rank recorded (what a trial that drew from them would shift)."""
    for ra, rb in zip(a["ranks"], b["ranks"], strict=True):
        assert ra["python"] == rb["python"]
        assert torch.equal(ra["numpy"]["keys"], rb["numpy"]["keys"]) and ra["numpy"]["pos"] == rb["numpy"]["pos"]
        assert torch.equal(ra["torch"], rb["torch"])


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_timed_run_trains_exactly_as_one_given_the_format_by_flag(data, tmp_path, monkeypatch, capsys,
                                                                     channels_last):
    made = winner(monkeypatch, channels_last)
    code, out, err = run_cli(train_args(data, tmp_path, "timed", *QUIET), capsys)
    assert code == 0, err
    assert len(made) == 1 and made[0].rounds >= 3  # the scratch steps really ran
    name = "channels_last" if channels_last else "NCHW"
    assert [line for line in out.splitlines() if line.startswith("=> memory format:")] == [
        next(line for line in out.splitlines() if line.startswith(f"=> memory format: {name} (timed over "))]
    assert f"=> training on cpu, float32, {name};" in out
    flag = "--channels_last" if channels_last else "--no-channels_last"
    code, out, _ = run_cli(train_args(data, tmp_path, "forced", *QUIET, flag), capsys)
    assert code == 0 and len(made) == 1 and "memory format:" not in out  # a flag forces: no timing
    timed, forced = load(tmp_path / "timed" / "checkpoint.pth.tar"), load(tmp_path / "forced" / "checkpoint.pth.tar")
    assert timed["config"]["channels_last"] is channels_last
    assert_same_weights(timed, forced)
    assert_same_random_states(timed, forced)


def test_the_second_run_takes_the_cached_choice_and_a_flag_still_forces(data, tmp_path, monkeypatch, capsys,
                                                                        fresh_cache):
    made = winner(monkeypatch, True)
    assert run_cli(train_args(data, tmp_path, "first", *QUIET), capsys)[0] == 0
    assert fresh_cache.is_file() and len(made) == 1
    code, out, _ = run_cli(train_args(data, tmp_path, "second", *QUIET), capsys)
    assert code == 0 and len(made) == 1  # not timed again
    assert "=> memory format: channels_last (timed on this machine before: NCHW " in out
    code, out, _ = run_cli(train_args(data, tmp_path, "third", *QUIET, "--no-channels_last"), capsys)
    assert code == 0 and "memory format:" not in out and "float32, NCHW;" in out
    assert load(tmp_path / "third" / "checkpoint.pth.tar")["config"]["channels_last"] is False


@pytest.mark.parametrize("first", ["--channels_last", "--no-channels_last"])
def test_a_resumed_run_keeps_its_checkpoints_format_and_resumes_exactly(data, tmp_path, monkeypatch, capsys,
                                                                        first):
    """A different format computes with different rounding: a resume that re-timed (or found another
    cached answer) and switched would not be bit-exact. So it takes the checkpoint's format."""
    two = ["--epochs", "2", "--no-verbose"]
    assert run_cli(train_args(data, tmp_path, "ref", *two, first), capsys)[0] == 0
    assert run_cli(train_args(data, tmp_path, "run", "--epochs", "1", "--no-verbose", first), capsys)[0] == 0
    made = winner(monkeypatch, first == "--no-channels_last")  # a timing now would choose the other format
    code, out, err = run_cli(train_args(data, tmp_path, "run", *two, "--resume", "auto"), capsys)
    assert code == 0, err
    assert made == [] and "memory format:" not in out
    resumed = load(tmp_path / "run" / "checkpoint.pth.tar")
    assert resumed["config"]["channels_last"] is (first == "--channels_last")
    assert_same_weights(resumed, load(tmp_path / "ref" / "checkpoint.pth.tar"))


def test_the_trial_step_is_the_trainers_own_on_a_scratch_model(data, tmp_path, monkeypatch):
    cfg = parse_train_args(train_args(data, tmp_path, "trial", *QUIET))
    bundle = build_data(DataRequest("cifar10", data, cfg.batch_size, 0, cfg.seed), CPU)
    spec = cfg.model_spec.__class__(**(cfg.model_spec.to_dict() | {"num_classes": 10}))
    seen = []
    real_step = Trainer.train_step

    def spy(self, images, *args, **kwargs):
        seen.append((self.model, self.rt.channels_last))
        return real_step(self, images, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", spy)
    make = format_trial.trial_steps(cfg, Runtime(CPU, None, False, rank=3, world_size=4), bundle, spec)
    for channels_last in (False, True):
        make(channels_last)()
        model, used = seen[-1]
        assert used is channels_last  # a single-process scratch runtime in the candidate's format
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert seen[0][0] is not seen[1][0]


@pytest.mark.parametrize(("batch", "world", "expected"), [(8, 1, 8), (512, 1, 160), (512, 2, 80)])
def test_no_trial_batch_is_larger_than_the_runs_batches(data, tmp_path, batch, world, expected):
    """A tiny data set trains on batches of its own size: a trial at --batch_size would time a
    step the run never takes (ResNet-50 at 256 images of 224 pixels, for a two-image test set)."""
    cfg = parse_train_args(train_args(data, tmp_path, "trial", *QUIET, "--batch_size", str(batch)))
    bundle = build_data(DataRequest("cifar10", data, cfg.batch_size, 0, cfg.seed, 0, world), CPU)
    assert format_trial.trial_batch(bundle) == expected
    assert format_trial.trial_network(cfg, bundle, cfg.model_spec)["batch_size"] == expected


def test_the_timing_can_be_switched_off_and_the_rule_decides(data, tmp_path, monkeypatch, capsys):
    """IDML_MEMORY_FORMAT_TRIAL=off (as the test suite runs): no trial step, no cache, one line."""
    monkeypatch.setattr(autotune, "time_formats", lambda *a, **k: pytest.fail("timed although switched off"))
    monkeypatch.setenv(format_trial.TRIAL_VARIABLE, "off")
    code, out, err = run_cli(train_args(data, tmp_path, "untimed", *QUIET), capsys)
    assert code == 0, err
    rule = "channels_last"  # the rule for untimed runs in float32 (idml.device.runtime.default_channels_last)
    assert [line for line in out.splitlines() if "memory format:" in line] == [
        f"=> memory format: {rule} (not timed: IDML_MEMORY_FORMAT_TRIAL=off, so the rule for untimed runs "
        "chose it; see docs/speed.md)"]
    assert load(tmp_path / "untimed" / "checkpoint.pth.tar")["config"]["channels_last"] is True
    assert not autotune.FormatCache().path.exists()


def test_a_bad_trial_setting_is_one_line_and_exit_2(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(format_trial.TRIAL_VARIABLE, "sometimes")
    code, _, err = run_cli(train_args(data, tmp_path, "bad", *QUIET), capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [
        "idml train: error: IDML_MEMORY_FORMAT_TRIAL='sometimes': set it to off (no timing: the rule for untimed runs "
        "chooses the CPU memory format) or on, or unset it"]
