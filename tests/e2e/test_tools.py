"""The tools around training, end to end through the CLI on one tiny CIFAR-10 run:
metrics.csv, idml eval, idml predict and idml plot."""

import contextlib
import csv
import io
import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import fake_data
from idml.checkpoint.io import load_checkpoint
from idml.checkpoint.schema import BEST_NAME
from idml.cli import main as cli_main
from idml.config import parse_train_args
from idml.data.augment import Normalize
from idml.data.cifar import CIFAR_MEAN, CIFAR_STD, load_cifar
from idml.metrics import detection_metrics, softmax, topk_error
from idml.models.registry import build_from_spec
from idml.models.spec import ModelSpec
from idml.training.run_log import read_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TINY = ["--dataset", "cifar10", "--net_type", "resnet", "--depth", "8", "--no-bottleneck", "--batch_size", "8",
        "--device", "cpu", "--amp", "off", "--no-verbose"]


def run_cli(argv):
    """(exit status, stdout, stderr) of ``idml <argv>`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli_main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two epochs of a ResNet-8 with CutMix and Mixup alternating, on 20 CIFAR-10 images."""
    root = tmp_path_factory.mktemp("tiny")
    fake_data.make_cifar10(root / "data")
    argv = ["train", *TINY, "--data_dir", str(root / "data"), "--output_dir", str(root / "runs"), "--epochs", "2",
            "--expname", "tiny", "--beta", "1", "--cutmix_prob", "0.5", "--mixup_alpha", "1", "--mixup_prob", "0.5"]
    status, out, err = run_cli(argv)
    assert status == 0, err
    return {"root": root, "run": root / "runs" / "tiny", "data": root / "data", "out": out, "argv": argv}


def is_png(path):
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_SIGNATURE


def test_train_logs_metrics_csv_and_seed_console_lines(tiny):
    rows = read_metrics(tiny["run"] / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1]
    assert [r["lr"] for r in rows] == [pytest.approx(0.1), pytest.approx(0.01)]  # x0.1 from epoch E/2
    console_val_err = [float(e) for e in re.findall(r"Top 1-err (\S+)  Top 5-err \S+\t Test Loss", tiny["out"])]
    assert [r["val_top1_err"] for r in rows] == pytest.approx(console_val_err, abs=1e-3)
    assert all(r["images_per_s"] > 0 and r["epoch_seconds"] > 0 and r["train_loss"] > 0 for r in rows)
    assert "\nEpoch: [" not in tiny["out"]  # --no-verbose: per-epoch summaries only, as the official code
    saved = parse_train_args(["--config", str(tiny["run"] / "config.yaml")])
    assert saved == parse_train_args(tiny["argv"][1:])


def manual_outputs(checkpoint, data_dir):
    """Plain logits and ||u||^2 of the validation images, computed without idml eval's plumbing."""
    state = load_checkpoint(checkpoint)
    model = build_from_spec(ModelSpec(**state.model))
    model.load_state_dict(state.state_dict)
    images, targets = load_cifar("cifar10", data_dir)["test"]
    with torch.no_grad():
        out = model.eval()(Normalize(CIFAR_MEAN, CIFAR_STD, torch.device("cpu"))(images))
    return out.logits.double().numpy(), out.uncertainty.pow(2).sum(1).double().numpy(), targets.numpy(), images


def test_eval_matches_a_manual_forward_pass(tiny, tmp_path):
    checkpoint = tiny["run"] / BEST_NAME
    plot = tmp_path / "eval.png"
    status, out, _ = run_cli(["eval", "--checkpoint", str(checkpoint), "--data_dir", str(tiny["data"]), "--json",
                              "--device", "cpu", "--plot", str(plot)])
    assert status == 0
    result = json.loads(out)
    logits, scores, targets, _ = manual_outputs(checkpoint, tiny["data"])
    wrong = logits.argmax(1) != targets
    assert result["dataset"] == "cifar10" and result["ism"] is True and result["test_images"] == 10
    assert result["top1_err"] == pytest.approx(topk_error(logits, targets, 1))
    assert result["top5_err"] == pytest.approx(topk_error(logits, targets, 5))
    msp = detection_metrics(1 - softmax(logits).max(1), wrong)
    u = detection_metrics(scores, wrong)
    for key in ("auroc", "aupr", "fpr95"):
        for name, expected in (("msp", msp), ("u_norm2", u)):
            got = result["mistakes"]["by_score"][name][key]
            assert got == (None if expected[key] is None else pytest.approx(expected[key], rel=1e-4)), (name, key)
    assert is_png(plot)

    status, text, _ = run_cli(["eval", "--checkpoint", str(checkpoint), "--data_dir", str(tiny["data"])])
    assert status == 0 and "ECE" in text and f"top-1 error  {result['top1_err']:.2f} %" in text


def test_eval_and_predict_without_ism(tiny, tmp_path):
    ckpt = load_checkpoint(tiny["run"] / BEST_NAME)
    spec = replace(ckpt.spec, ism=False)
    plain = replace(ckpt, model=spec.to_dict(), state_dict=build_from_spec(spec).state_dict(), optimizer=None)
    torch.save(plain.to_state(), tmp_path / "plain.pth.tar")

    status, out, _ = run_cli(["eval", "--checkpoint", str(tmp_path / "plain.pth.tar"),
                              "--data_dir", str(tiny["data"]), "--plot", str(tmp_path / "plain.png")])
    assert status == 0 and "ISM off" in out and "u_norm2" not in out and "msp" in out
    assert is_png(tmp_path / "plain.png")
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    status, out, _ = run_cli(["predict", "--checkpoint", str(tmp_path / "plain.pth.tar"), str(tmp_path / "red.png"),
                              "--format", "json"])
    assert status == 0 and json.loads(out)[0]["uncertainty"] is not None  # the default score needs no ISM


def test_eval_refuses_a_dataset_of_another_input_size(tiny):
    status, out, err = run_cli(["eval", "--checkpoint", str(tiny["run"] / BEST_NAME), "--dataset", "imagenet",
                                "--data_dir", str(tiny["data"])])
    assert status == 2 and out == "" and err.count("\n") == 1


@pytest.fixture
def image_folder(tiny, tmp_path):
    """Three validation images saved as PNG (one in a subfolder, one grayscale) and a text file."""
    *_, images = manual_outputs(tiny["run"] / BEST_NAME, tiny["data"])
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    pixels = images.permute(0, 2, 3, 1).numpy()
    Image.fromarray(pixels[0]).save(tmp_path / "imgs" / "a.png")
    Image.fromarray(pixels[1]).save(tmp_path / "imgs" / "sub" / "b.png")
    Image.fromarray(pixels[2]).convert("L").save(tmp_path / "imgs" / "c.png")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    return tmp_path / "imgs"


def test_predict_formats_agree_with_the_model(tiny, image_folder):
    checkpoint = str(tiny["run"] / BEST_NAME)
    outputs = {fmt: run_cli(["predict", "--checkpoint", checkpoint, str(image_folder), "--topk", "3",
                             "--format", fmt, "--score", "u_norm2"]) for fmt in ("table", "csv", "json")}
    assert all(status == 0 for status, _, _ in outputs.values())
    records = json.loads(outputs["json"][1])
    files = [str(image_folder / "a.png"), str(image_folder / "c.png"), str(image_folder / "sub" / "b.png")]
    assert [r["file"] for r in records] == files  # sorted, text file skipped
    logits, scores, _, _ = manual_outputs(checkpoint, tiny["data"])
    probs = softmax(logits)
    first = records[0]  # a.png holds validation image 0 exactly: same prediction as the model on it
    assert first["topk"][0]["class"] == CIFAR10_NAMES[int(probs[0].argmax())]
    assert [t["probability"] for t in first["topk"]] == pytest.approx(np.sort(probs[0])[::-1][:3], rel=1e-5)
    assert first["uncertainty"] == pytest.approx(scores[0], rel=1e-5)

    rows = list(csv.DictReader(io.StringIO(outputs["csv"][1])))
    assert list(rows[0]) == ["file", "uncertainty", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    assert [r["file"] for r in rows] == files
    assert float(rows[0]["prob_1"]) == pytest.approx(first["topk"][0]["probability"], abs=1e-6)

    table = outputs["table"][1].splitlines()
    assert table[0].split() == ["file", "uncertainty", "(u_norm2)", "top-1", "top-2", "top-3"] and len(table) == 4
    assert table[1].startswith(files[0]) and f"{100 * first['topk'][0]['probability']:.1f}%" in table[1]


def test_predict_unreadable_file_is_one_line_exit_2(tiny, image_folder):
    bad = image_folder / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    status, out, err = run_cli(["predict", "--checkpoint", str(tiny["run"] / BEST_NAME), str(image_folder)])
    assert status == 2 and out == "" and err.count("\n") == 1 and str(bad) in err
    status, _, err = run_cli(["predict", "--checkpoint", str(tiny["run"] / BEST_NAME), "missing.jpg"])
    assert status == 2 and "missing.jpg" in err


def test_plot_one_and_two_runs(tiny, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny["run"], other)
    status, out, _ = run_cli(["plot", str(tiny["run"]), str(other), "--out", str(tmp_path / "curves.png")])
    assert status == 0 and is_png(tmp_path / "curves.png") and "curves.png" in out
    status, _, _ = run_cli(["plot", str(tiny["run"]), "--out", str(tmp_path / "one" / "c.png")])
    assert status == 0 and is_png(tmp_path / "one" / "c.png")
    status, _, err = run_cli(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")])
    assert status == 2 and "metrics.csv" in err and not (tmp_path / "x.png").exists()


def test_plot_names_a_missing_run_folder_and_the_runs_beside_it(tiny, tmp_path):
    missing = tiny["run"].parent / "digits_mixup"
    status, out, err = run_cli(["plot", str(tiny["run"]), str(missing), "--out", str(tmp_path / "x.png")])
    assert status == 2 and out == "" and err.count("\n") == 1
    assert f"no run folder {missing} ({missing.parent}/ holds: {tiny['run'].name})" in err
    assert not (tmp_path / "x.png").exists()
