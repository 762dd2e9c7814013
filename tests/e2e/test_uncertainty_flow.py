"""The digits OOD flow end to end through the CLI: ``idml train --classes 0-4 --val_split 0.1``, then
``idml eval --ood digits:5-9 --json``, checked against an independent computation; the training
protocol's records (metrics.csv, checkpoint, console) and every new flag's bad input."""

import contextlib
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import average_precision_score, roc_auc_score

from expect import one_error_line
from idml.checkpoint.io import load_checkpoint
from idml.checkpoint.schema import BEST_NAME, CHECKPOINT_NAME
from idml.cli import main as cli_main
from idml.data.augment import Normalize
from idml.data.digits import DIGITS_MEAN, DIGITS_STD, load_digits_data
from idml.models.registry import build_from_spec
from idml.models.spec import ModelSpec
from idml.training.run_log import read_metrics

TRAIN = ["train", "--dataset", "digits", "--classes", "0-4", "--val_split", "0.1", "--net_type", "resnet",
         "--depth", "8", "--no-bottleneck", "--batch_size", "64", "--epochs", "2", "--device", "cpu", "--amp", "off",
         "--no-verbose", "--seed", "3"]


def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli_main(argv)
        except SystemExit as exc:  # argparse's errors
            status = exc.code
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    status, out, err = run_cli([*TRAIN, "--output_dir", str(root), "--expname", "seen04"])
    assert status == 0, err
    return {"dir": root / "seen04", "out": out, "root": root}


def test_training_records_the_protocol(run):
    state = load_checkpoint(run["dir"] / CHECKPOINT_NAME)
    rows = read_metrics(run["dir"] / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1] and all(r["test_top1_err"] is not None for r in rows)
    best = min(range(2), key=lambda e: (rows[e]["val_top1_err"], -e))  # ties: the later epoch (<=)
    assert state.best_err1 == pytest.approx(rows[best]["val_top1_err"], abs=1e-3)
    assert state.test_at_best["epoch"] == best
    assert state.test_at_best["top1_err"] == pytest.approx(rows[best]["test_top1_err"], abs=1e-3)
    assert state.test_at_last["epoch"] == 1
    assert state.test_at_last["top1_err"] == pytest.approx(rows[1]["test_top1_err"], abs=1e-3)
    assert 0.01 < state.temperature < 100 and state.class_names == ["0", "1", "2", "3", "4"]
    assert "test at the best validation epoch" in run["out"] and "test at the last epoch" in run["out"]
    assert load_checkpoint(run["dir"] / BEST_NAME).test_at_best["epoch"] == best


def manual_outputs(checkpoint, images):
    """Logits and ||u||^2 of ``images`` from the checkpoint, without idml's inference code."""
    state = load_checkpoint(checkpoint)
    model = build_from_spec(ModelSpec(**state.model)).eval()
    model.load_state_dict(state.state_dict)
    with torch.no_grad():
        out = model(Normalize(DIGITS_MEAN, DIGITS_STD, torch.device("cpu"))(images))
    return out.logits.double().numpy(), out.uncertainty.pow(2).sum(1).double().numpy()


def test_eval_ood_json_agrees_with_an_independent_computation(run, tmp_path):
    checkpoint = run["dir"] / BEST_NAME
    status, out, err = run_cli(["eval", "--checkpoint", str(checkpoint), "--ood", "digits:5-9", "--json",
                                "--blends", "60", "--device", "cpu", "--plot", str(tmp_path / "e.png")])
    assert status == 0, err
    report = json.loads(out)
    assert report["schema"] == "idml-eval/1" and report["ood"]["spec"] == "digits:5-9"
    assert (tmp_path / "e.png").stat().st_size > 1000
    # independent: scikit-learn's own digits, test images = every fifth, classes 0-4 in / 5-9 out
    test = load_digits_data()["test"]
    seen = test[1] < 5
    logits_in, u_in = manual_outputs(checkpoint, test[0][seen])
    logits_out, u_out = manual_outputs(checkpoint, test[0][~seen])
    targets = test[1][seen].numpy()
    assert len(load_digits().target[::5]) == len(test[1])
    assert report["test_images"] == seen.sum().item() and report["ood"]["images"] == (~seen).sum().item()
    assert report["top1_err"] == pytest.approx(100 * np.mean(logits_in.argmax(1) != targets))
    wrong = logits_in.argmax(1) != targets
    p_in = np.exp(logits_in) / np.exp(logits_in).sum(1, keepdims=True)
    p_out = np.exp(logits_out) / np.exp(logits_out).sum(1, keepdims=True)
    if 0 < wrong.sum() < len(wrong):
        assert report["mistakes"]["by_score"]["msp"]["auroc"] == pytest.approx(roc_auc_score(wrong, 1 - p_in.max(1)))
        assert report["mistakes"]["by_score"]["u_norm2"]["aupr"] == pytest.approx(average_precision_score(wrong, u_in),
                                                                                  rel=1e-4)
    is_ood = np.r_[np.zeros(len(u_in)), np.ones(len(u_out))]
    ood = report["ood"]["by_score"]
    assert ood["u_norm2"]["auroc"] == pytest.approx(roc_auc_score(is_ood, np.r_[u_in, u_out]), rel=1e-4)
    assert ood["msp"]["auroc"] == pytest.approx(roc_auc_score(is_ood, np.r_[1 - p_in.max(1), 1 - p_out.max(1)]),
                                                rel=1e-4)
    assert ood["energy"]["aupr"] == pytest.approx(average_precision_score(
        is_ood, -np.log(np.r_[np.exp(logits_in).sum(1), np.exp(logits_out).sum(1)])), rel=1e-4)
    temperature = load_checkpoint(checkpoint).temperature
    assert report["temperature"] == pytest.approx(temperature) and report["temperature_source"] == "checkpoint"
    scaled = np.exp(logits_in / temperature)
    scaled /= scaled.sum(1, keepdims=True)
    nll = -np.mean(np.log(scaled[np.arange(len(targets)), targets]))
    assert report["calibration"]["after_scaling"]["nll"] == pytest.approx(nll, rel=1e-4)
    assert set(report["blends"]["by_score"]) == set(report["scores"]) and report["blends"]["images"] == 60


def test_eval_text_and_refitted_temperature(run):
    status, out, err = run_cli(["eval", "--checkpoint", str(run["dir"] / BEST_NAME), "--fit_temperature",
                                "--device", "cpu"])
    assert status == 0, err
    saved = load_checkpoint(run["dir"] / BEST_NAME).temperature
    assert f"T = {saved:.3f}, fitted on the validation split" in out  # the same split, the same fit
    assert "u_norm2" in out and "ism_exponent" in out and "err-AUROC" in out


def test_predict_default_score_temperature_and_score_flag(run, tmp_path):
    digits = load_digits()
    Image.fromarray(np.uint8(digits.images[0] * 255 / 16)).resize((32, 32)).save(tmp_path / "d.png")
    checkpoint = str(run["dir"] / BEST_NAME)
    status, out, err = run_cli(["predict", "--checkpoint", checkpoint, str(tmp_path / "d.png"), "--format", "json"])
    assert status == 0, err
    record = json.loads(out)[0]
    from idml.scores import DEFAULT_SCORE

    assert record["score"] == DEFAULT_SCORE
    status, out, _ = run_cli(["predict", "--checkpoint", checkpoint, str(tmp_path / "d.png"), "--format", "json",
                              "--score", "u_norm2", "--topk", "5"])
    other = json.loads(out)[0]
    assert status == 0 and other["score"] == "u_norm2" and other["uncertainty"] >= 0
    assert sum(t["probability"] for t in other["topk"]) == pytest.approx(1.0)


@pytest.mark.parametrize(("argv", "fragments"), [
    (["--ood", "digits:0-4"], ["--ood", "trained on class(es) [0, 1, 2, 3, 4]"]),
    (["--ood", "digits:3-7"], ["--ood", "[3, 4]"]),
    (["--ood", "svhn"], ["unknown --dataset 'svhn'"]),
    (["--ood", "digits:x"], ["--ood", "ranges and lists"]),
    (["--ood", "digits:5-12"], ["--ood", "class 12 does not exist"]),
    (["--ood", "imagenet"], ["--ood"]),
    (["--blends", "-1"], ["--blends"]),
    (["--blends", "x"], ["--blends"]),
])
def test_eval_bad_flags_are_one_line(run, argv, fragments):
    status, out, err = run_cli(["eval", "--checkpoint", str(run["dir"] / BEST_NAME), "--device", "cpu", *argv])
    one_error_line(err, *fragments, code=status)
    assert out == ""


def test_official_protocol_without_split_and_without_ism(tmp_path):
    """No --val_split: the official lines and no temperature; eval cannot fit one, and the ISM
    scores of predict are refused for a --no-ism model."""
    argv = [a for a in TRAIN if a not in ("--val_split", "0.1")]
    status, out, err = run_cli([*argv, "--epochs", "1", "--no-ism", "--output_dir", str(tmp_path), "--expname", "n"])
    assert status == 0, err
    checkpoint = str(tmp_path / "n" / CHECKPOINT_NAME)
    state = load_checkpoint(checkpoint)
    assert state.temperature is None and state.test_at_best is None
    # digits is idml's own dataset: idml's best line (not the official one), on the test split
    assert re.search(r"^Current best: epoch 0, test error \d+\.\d\d %$", out, re.M), out  # 5 classes: no top-5
    assert "validation" not in out
    assert "test_top1_err" not in (tmp_path / "n" / "metrics.csv").read_text()
    status, out, err = run_cli(["eval", "--checkpoint", checkpoint, "--fit_temperature", "--device", "cpu"])
    one_error_line(err, "--fit_temperature", "--val_split", code=status)
    status, out, err = run_cli(["eval", "--checkpoint", checkpoint, "--json", "--device", "cpu"])
    report = json.loads(out)
    assert status == 0 and report["calibration"]["after_scaling"] is None and "u_norm2" not in report["scores"]
    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    status, _, err = run_cli(["predict", "--checkpoint", checkpoint, str(tmp_path / "x.png"), "--score", "u_norm2"])
    one_error_line(err, "--score u_norm2 needs a model trained with the ISM head", code=status)


@pytest.mark.parametrize(("argv", "fragments"), [
    (["--score", "bogus"], ["--score", "invalid choice"]),
])
def test_predict_bad_score_is_one_line(run, tmp_path, argv, fragments):
    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    status, _, err = run_cli(["predict", "--checkpoint", str(run["dir"] / BEST_NAME), str(tmp_path / "x.png"), *argv])
    one_error_line(err, *fragments, code=status)


@pytest.mark.parametrize(("flags", "fragment"), [
    (["--val_split", "2"], "--val_split must be a number in [0, 1)"),
    (["--classes", "9-3"], "backwards"),
    (["--classes", "0-4", "--val_split", "0.999"], "--val_split"),
])
def test_train_bad_flags_are_one_line(tmp_path, flags, fragment):
    status, _, err = run_cli([*TRAIN, *flags, "--output_dir", str(tmp_path), "--expname", "bad"])
    one_error_line(err, fragment, code=status)
    assert not (tmp_path / "bad" / CHECKPOINT_NAME).exists()


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), "2"])
def test_a_bad_saved_temperature_is_one_line(run, tmp_path, bad):
    state = load_checkpoint(run["dir"] / BEST_NAME).to_state()
    torch.save(state | {"temperature": bad}, tmp_path / "bad.pth.tar")
    status, out, err = run_cli(["eval", "--checkpoint", str(tmp_path / "bad.pth.tar"), "--device", "cpu"])
    one_error_line(err, "temperature", code=status)
    assert out == ""
