"""Checkpoints that are damaged, unreadable, tampered with or shaped wrongly give one line each.

The reference checkpoint comes from a real ``idml train`` run (a subprocess, so this file does
not depend on where the training code lives); each test changes one thing in it. Memory-hungry
regressions run in a forked child whose peak memory is measured, so a regression fails one test
instead of exhausting the machine.

Checkpoint files: atomic replacement, ordinary permissions, safe loading with clear errors.
"""

from __future__ import annotations

import copy
import errno
import io
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import idml
import idml.checkpoint.io
import idml.files
from child import in_child
from expect import one_line_message
from idml.checkpoint.io import load_checkpoint, save_checkpoint
from idml.checkpoint.schema import Checkpoint
from idml.errors import IdmlError
from idml.files import atomic_write
from idml.inference import load_trained_model

SRC = Path(idml.__file__).resolve().parents[1]
CPU = torch.device("cpu")


def env() -> dict[str, str]:
    return os.environ | {"PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
                         "OMP_NUM_THREADS": "1"}


def write_cifar10(root: Path, n: int = 8) -> None:
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": [i % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=2))


def idml_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "idml", *args], capture_output=True, text=True, timeout=300,
                          env=env())


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished one-epoch run of a tiny CIFAR-10 ResNet with ISM."""
    root = tmp_path_factory.mktemp("run")
    write_cifar10(root / "data")
    done = idml_cli("train", "--dataset", "cifar10", "--net_type", "resnet", "--depth", "8", "--no-bottleneck",
                    "--batch_size", "8", "--device", "cpu", "--amp", "off", "--workers", "0", "--epochs", "1",
                    "--no-verbose", "--data_dir", str(root / "data"), "--output_dir", str(root), "--expname", "r")
    assert done.returncode == 0, done.stderr
    return {"data": root / "data", "checkpoint": root / "r" / "checkpoint.pth.tar"}


@pytest.fixture
def state(run: dict[str, Path]) -> dict:
    return torch.load(run["checkpoint"], map_location="cpu", weights_only=True)


def save(state: dict, path: Path) -> Path:
    torch.save(state, path)
    return path


# -- the file: unreadable, corrupt, tampered ----------------------------------------------------------
def member_offset(path: Path, name_suffix: str) -> tuple[int, int]:
    """(offset of the data, size) of the largest zip member whose name ends with ``name_suffix``."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if name_suffix in i.filename), key=lambda i: i.file_size)
    raw = path.read_bytes()
    header = info.header_offset
    name_len, extra_len = int.from_bytes(raw[header + 26:header + 28], "little"), \
        int.from_bytes(raw[header + 28:header + 30], "little")
    return header + 30 + name_len + extra_len, info.file_size


def test_a_flipped_byte_in_a_weight_fails_the_crc_check(run: dict[str, Path], tmp_path: Path) -> None:
    """torch.load reads such a file without complaint: the weight is silently wrong."""
    path = tmp_path / "c.pth.tar"
    raw = bytearray(run["checkpoint"].read_bytes())
    offset, size = member_offset(run["checkpoint"], "/data/")
    raw[offset + size // 2] ^= 0xFF
    path.write_bytes(raw)
    torch.load(path, weights_only=True)  # the premise: torch itself does not notice
    with pytest.raises(IdmlError) as info:
        load_checkpoint(path)
    one_line_message(info, str(path), "CRC", "truncated or corrupt")


def test_a_flipped_byte_in_the_pickle_fails_the_crc_check(run: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "c.pth.tar"
    raw = bytearray(run["checkpoint"].read_bytes())
    offset, size = member_offset(run["checkpoint"], "data.pkl")
    text_at = raw.index(b"airplane", offset, offset + size)
    raw[text_at] = ord("b")  # still a valid pickle: class 0 would silently be called "birplane"
    path.write_bytes(raw)
    assert torch.load(path, weights_only=True)["class_names"][0] == "birplane"
    with pytest.raises(IdmlError) as info:
        load_checkpoint(path)
    one_line_message(info, "CRC", "truncated or corrupt")


def recompressed(src: Path, dst: Path) -> Path:
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as out:
        for info in archive.infolist():
            out.writestr(info.filename, archive.read(info.filename))
    return dst


CORRUPTIONS = {
    "truncated": lambda src, dst: dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2]),
    "empty": lambda src, dst: dst.write_bytes(b""),
    "garbage": lambda src, dst: dst.write_bytes(b"not a checkpoint" * 100),
    "compressed_members": recompressed,
    "legacy_format": lambda src, dst: torch.save(torch.load(src, weights_only=True), dst,
                                                 _use_new_zipfile_serialization=False),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupt_files(run: dict[str, Path], tmp_path: Path, case: str) -> None:
    path = tmp_path / "c.pth.tar"
    CORRUPTIONS[case](run["checkpoint"], path)
    with pytest.raises(IdmlError) as info:
        load_checkpoint(path)
    message = one_line_message(info, "cannot load checkpoint", "truncated or corrupt")
    assert "tampered" not in message and "permission" not in message.lower()


def test_unreadable_file_says_so_not_corrupt(run: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``chmod 000`` gives a non-root user (the tests run as root, so it is simulated)."""
    def denied(*_args, **_kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(idml.files, "open_regular", denied)  # the one place files are opened to read
    with pytest.raises(IdmlError) as info:
        load_checkpoint(run["checkpoint"])
    message = one_line_message(info, f"cannot read checkpoint {run['checkpoint']}: Permission denied")
    assert "corrupt" not in message
    assert isinstance(info.value.__cause__, PermissionError)  # --debug shows the cause


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="permissions do not apply to root")
def test_real_chmod_000(run: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "c.pth.tar"
    path.write_bytes(run["checkpoint"].read_bytes())
    path.chmod(0)
    with pytest.raises(IdmlError) as info:
        load_checkpoint(path)
    one_line_message(info, "cannot read checkpoint", "Permission denied")


def test_a_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(IdmlError) as info:
        load_checkpoint(tmp_path)
    one_line_message(info, "is a folder")


class Payload:
    def __reduce__(self):
        return (print, ("ran code",))


def test_tampered_file_is_refused_as_such(state: dict, tmp_path: Path) -> None:
    path = save(state | {"class_names": Payload()}, tmp_path / "c.pth.tar")
    with pytest.raises(IdmlError) as info:
        load_checkpoint(path)
    message = one_line_message(info, "refusing to load", "tampered")
    assert "corrupt" not in message and "not an idml checkpoint" not in message


# -- the fields: every one idml writes, with a wrong type or range -----------------------------------------
def sparse_weight(state: dict) -> torch.Tensor:
    return state["state_dict"]["head.fc.bias"].to_sparse()


def set_path(state: dict, keys: tuple, value) -> None:
    target = state
    for key in keys[:-1]:
        target = target[key]
    if value is DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value(state) if callable(value) else value


DELETE = object()
BAD_FIELDS = {
    "not_a_dict": ((), [1, 2], "must be text keys of a dict"),
    "model_missing": (("model",), DELETE, "field model must be"),
    "model_list": (("model",), [1], "field model must be"),
    "net_type_int": (("model", "net_type"), 5, "field model.net_type"),
    "dataset_unknown": (("model", "dataset"), "mnist", "field model.dataset"),
    "depth_str": (("model", "depth"), "8", "field model.depth"),
    "depth_bool": (("model", "depth"), True, "field model.depth"),
    "depth_zero": (("model", "depth"), 0, "field model.depth"),
    "alpha_nan": (("model", "alpha"), float("nan"), "field model.alpha"),
    "bottleneck_int": (("model", "bottleneck"), 1, "field model.bottleneck"),
    "num_classes_float": (("model", "num_classes"), 10.0, "field model.num_classes"),
    "ism_str": (("model", "ism"), "yes", "field model.ism"),
    "uncertainty_dim_negative": (("model", "uncertainty_dim"), -1, "field model.uncertainty_dim"),
    "ism_lambda_zero": (("model", "ism_lambda"), 0.0, "field model.ism_lambda"),
    "state_dict_missing": (("state_dict",), DELETE, "field state_dict must be"),
    "state_dict_list": (("state_dict",), [torch.zeros(1)], "field state_dict must be"),
    "weight_not_a_tensor": (("state_dict", "head.fc.bias"), [0.0] * 10, "state_dict['head.fc.bias']"),
    "weight_sparse": (("state_dict", "head.fc.bias"), sparse_weight, "dense tensor"),
    "epoch_negative": (("epoch",), -1, "field epoch"),
    "epoch_float": (("epoch",), 1.5, "field epoch"),
    "arch_list": (("arch",), ["resnet"], "field arch"),
    "best_err1_str": (("best_err1",), "90", "field best_err1"),
    "best_err5_nan": (("best_err5",), float("nan"), "field best_err5"),
    "best_err1_above_100": (("best_err1",), 101.0, "field best_err1"),
    "optimizer_list": (("optimizer",), [], "field optimizer"),
    "optimizer_no_groups": (("optimizer", "param_groups"), DELETE, "optimizer.param_groups"),
    "optimizer_params_str": (("optimizer", "param_groups", 0, "params"), "0-30", "optimizer.param_groups[0].params"),
    "optimizer_lr_str": (("optimizer", "param_groups", 0, "lr"), "0.1", "optimizer.param_groups[0].lr"),
    "optimizer_state_foreign_index": (("optimizer", "state", 999), {"momentum_buffer": torch.zeros(1)},
                                      "optimizer.state"),
    "optimizer_buffer_str": (("optimizer", "state", 0, "momentum_buffer"), [1.0], "optimizer.state[0]"),
    "scaler_list": (("scaler",), [], "field scaler"),
    "scaler_partial": (("scaler",), {"scale": 1024.0}, "field scaler.growth_factor"),
    "scaler_scale_str": (("scaler",), {"scale": "x", "growth_factor": 2.0, "backoff_factor": 0.5,
                                       "growth_interval": 2000, "_growth_tracker": 0}, "field scaler.scale"),
    "config_list": (("config",), [1], "field config"),
    "config_tensor": (("config", "lr"), torch.ones(1), "field config"),
    "class_names_ints": (("class_names",), list(range(10)), "field class_names"),
    "class_names_str": (("class_names",), "airplane", "field class_names"),
    "class_names_count": (("class_names",), ["a", "b"], "field class_names must be 10 names"),
    "mean_two": (("mean",), [0.5, 0.5], "field mean"),
    "mean_str": (("mean",), ["a", "b", "c"], "field mean"),
    "std_zero": (("std",), [0.2, 0.0, 0.2], "field std"),
    "input_size_huge": (("input_size",), 10**6, "field input_size"),
    "input_size_str": (("input_size",), "32", "field input_size"),
    "step_str": (("step",), "0", "field step"),
    "global_batch_zero": (("global_batch",), 0, "field global_batch"),
    "ranks_dict": (("ranks",), {}, "field ranks"),
    "rank_empty": (("ranks",), [{}], "field ranks[0].python"),
    "rank_python_short": (("ranks", 0, "python"), (3, (0,) * 10, None), "field ranks[0].python"),
    "rank_numpy_keys_shape": (("ranks", 0, "numpy", "keys"), torch.zeros(10, dtype=torch.int64),
                              "field ranks[0].numpy.keys"),
    "rank_numpy_pos": (("ranks", 0, "numpy", "pos"), 10**9, "field ranks[0].numpy.pos"),
    "rank_torch_short": (("ranks", 0, "torch"), torch.zeros(5, dtype=torch.uint8), "field ranks[0].torch"),
    "rank_cuda_wrong_size": (("ranks", 0, "cuda"), torch.zeros(5, dtype=torch.uint8), "field ranks[0].cuda"),
    "rank_meter_shape": (("ranks", 0, "train_meter"), torch.zeros(3, dtype=torch.float64),
                         "field ranks[0].train_meter"),
}


@pytest.mark.parametrize("case", BAD_FIELDS)
def test_fields_of_the_wrong_type_or_range(state: dict, tmp_path: Path, case: str) -> None:
    keys, value, fragment = BAD_FIELDS[case]
    if keys:
        set_path(state, keys, value)
    else:
        state = value
    path = save(state, tmp_path / "c.pth.tar")
    with pytest.raises(IdmlError) as info:
        load_checkpoint(path)
    one_line_message(info, str(path), "is not an idml checkpoint (", fragment)


def test_the_run_checkpoint_itself_is_valid(run: dict[str, Path], state: dict) -> None:
    assert load_checkpoint(run["checkpoint"]).to_state().keys() == state.keys()
    for field in ("epoch", "arch", "model", "state_dict", "best_err1", "best_err5", "optimizer", "scaler", "config",
                  "class_names", "mean", "std", "input_size", "step", "global_batch", "ranks"):
        assert field in state, field  # the schema covers what a real run writes


def test_fields_added_later_are_not_rejected(state: dict, tmp_path: Path) -> None:
    extra = {"ema_state_dict": copy.deepcopy(state["state_dict"]), "temperature": 1.5, "best_epoch": 0,
             "test_at_best": {"top1_err": 90.0}, "model": state["model"] | {"future_setting": [1, 2]}}
    path = save(state | extra, tmp_path / "c.pth.tar")
    loaded = load_checkpoint(path)
    assert loaded.temperature == 1.5 and loaded.spec.depth == state["model"]["depth"]
    assert load_trained_model(path, CPU).class_names[0] == "airplane"


def test_python_and_numpy_rng_states_of_a_real_process_pass(state: dict, tmp_path: Path) -> None:
    """The RNG checks accept what random/NumPy/torch really produce, not just this one run's."""
    random.seed(123)
    name, keys, pos, has_gauss, gauss = np.random.RandomState(7).get_state()
    cuda = torch.arange(16, dtype=torch.uint8)  # the size of torch.cuda.get_rng_state(): seed and offset
    state["ranks"] = [{"python": random.getstate(), "torch": torch.get_rng_state(), "cuda": cuda,
                       "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                                 "has_gauss": has_gauss, "gauss": gauss},
                       "train_meter": torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)}]
    load_checkpoint(save(state, tmp_path / "c.pth.tar"))


# -- sizes declared by the settings, against the weights ---------------------------------------------
def expanded(rows: int):
    """A head.fc.weight of ``rows`` rows that is one float repeated (stride 0): a few bytes on disk."""
    return lambda state: state["state_dict"]["head.fc.weight"][:1, :1].expand(rows, 64)


SIZE_CASES = {
    # the case: a 0.7 MB file declaring uncertainty_dim 4e6 cost 1.8 GB before it was refused
    "uncertainty_dim": ([(("model", "uncertainty_dim"), 4_000_000)], "model.uncertainty_dim"),
    "num_classes": ([(("model", "num_classes"), 4_000_000)], "model.num_classes"),
    "depth": ([(("model", "depth"), 6 * 2_000 + 2)], "model.depth"),
    "pyramidnet_alpha": ([(("model", "net_type"), "pyramidnet"), (("model", "alpha"), 1e7)], "model.alpha"),
    # settings and weights agree, but the weight is one float repeated (stride 0): 1 GB declared, bytes stored
    "expanded_fc_rows": ([(("state_dict", "head.fc.weight"), expanded(900_000)),
                          (("model", "num_classes"), 900_000), (("class_names",), DELETE)], "the tensors"),
}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork to measure a child's memory")
@pytest.mark.parametrize("case", SIZE_CASES)
def test_declared_sizes_are_checked_before_allocating(state: dict, tmp_path: Path, case: str) -> None:
    changes, fragment = SIZE_CASES[case]
    for keys, value in changes:
        set_path(state, keys, value)
    path = save(state, tmp_path / "c.pth.tar")
    assert path.stat().st_size < 2_000_000
    status, text, grown = in_child(lambda: load_trained_model(path, CPU))
    assert os.WIFEXITED(status), f"killed by signal {os.WTERMSIG(status)}"
    assert grown < 300_000_000, f"{grown / 1e6:.0f} MB allocated to refuse a {path.stat().st_size}-byte file"
    assert text.startswith("IdmlError: ") and fragment in text and "\n" not in text, text


# -- structurally valid, inconsistent: eval and predict get one line ----------------------------------
def scaled(key: str, factor: float):
    return lambda state: state["state_dict"][key] * factor


INCONSISTENT = {
    "missing_weight": ([(("state_dict", "backbone.stem.0.weight"), DELETE)], "missing backbone.stem.0.weight"),
    "extra_weight": ([(("state_dict", "backbone.extra"), torch.zeros(2))], "unexpected backbone.extra"),
    "wrong_shape": ([(("state_dict", "backbone.stem.0.weight"), torch.zeros(16, 3, 5, 5))], "shape (16, 3, 5, 5)"),
    "integer_weights": ([(("state_dict", "backbone.stem.0.weight"), torch.zeros(16, 3, 3, 3, dtype=torch.int32))],
                        "torch.int32"),
    "nan_weights": ([(("state_dict", "head.fc.weight"), scaled("head.fc.weight", float("nan")))], "NaN"),
    "other_depth": ([(("model", "depth"), 14)], "weights do not fit"),
    "other_dataset_family": ([(("model", "dataset"), "imagenet")], "input_size 32"),
    "impossible_depth": ([(("model", "depth"), 9)], "depth 9"),
    "unknown_network": ([(("model", "net_type"), "vgg")], "vgg"),
    "bottleneck_flipped": ([(("model", "bottleneck"), True)], "depth 8"),
    "ism_off_with_uncertainty_weights": ([(("model", "ism"), False)], "model.ism"),
    "no_mean": ([(("mean",), DELETE)], "field mean must be"),
    "no_input_size": ([(("input_size",), DELETE)], "field input_size must be"),
    "no_net_type": ([(("model", "net_type"), DELETE)], "field model.net_type must name a network (found nothing)"),
    "input_size_of_another_dataset": ([(("input_size",), 224)], "input_size 224"),
}


@pytest.mark.parametrize("case", INCONSISTENT)
def test_inconsistent_checkpoint_gives_one_line_in_load_trained_model(state: dict, tmp_path: Path, case: str) -> None:
    changes, fragment = INCONSISTENT[case]
    for keys, value in changes:
        set_path(state, keys, value)
    path = save(state, tmp_path / "c.pth.tar")
    with pytest.raises(IdmlError) as info:
        load_trained_model(path, CPU)
    one_line_message(info, str(path), fragment)


def test_a_valid_checkpoint_predicts_what_was_saved(run: dict[str, Path], state: dict) -> None:
    from idml.models.registry import build_from_spec
    from idml.models.spec import ModelSpec

    trained = load_trained_model(run["checkpoint"], CPU)
    reference = build_from_spec(ModelSpec(**state["model"])).eval()
    reference.load_state_dict(state["state_dict"])
    if trained.runtime.channels_last:  # the same kernels on both sides: the outputs are then bit-equal
        reference.to(memory_format=torch.channels_last)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(trained.model(images).logits, reference(images).logits)
    assert trained.class_names == state["class_names"] and trained.input_size == 32
    assert trained.mean == tuple(state["mean"]) and trained.std == tuple(state["std"])


def test_validate_checkpoint_without_a_file_size(state: dict) -> None:
    Checkpoint.from_state(state, "in-memory")
    with pytest.raises(IdmlError, match=r"in-memory is not an idml checkpoint \(field epoch"):
        Checkpoint.from_state(state | {"epoch": "1"}, "in-memory")


# -- the commands, end to end -----------------------------------------------------------------------
@pytest.mark.parametrize("command", ["eval", "predict", "resume"])
def test_commands_print_one_line_for_a_bad_checkpoint(run: dict[str, Path], state: dict, tmp_path: Path,
                                                      command: str) -> None:
    state["model"]["uncertainty_dim"] = "128"
    path = save(state, tmp_path / "checkpoint.pth.tar")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(image)
    args = {
        "eval": ["eval", "--checkpoint", str(path), "--data_dir", str(run["data"]), "--device", "cpu"],
        "predict": ["predict", "--checkpoint", str(path), str(image), "--device", "cpu"],
        "resume": ["train", "--dataset", "cifar10", "--net_type", "resnet", "--depth", "8", "--no-bottleneck",
                   "--batch_size", "8", "--device", "cpu", "--amp", "off", "--workers", "0", "--epochs", "2",
                   "--data_dir", str(run["data"]), "--output_dir", str(tmp_path), "--expname", "r",
                   "--resume", str(path)],
    }[command]
    done = idml_cli(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "field model.uncertainty_dim" in lines[0], done.stderr


def test_torch_optimizer_state_dicts_pass(state: dict) -> None:
    """The optimiser schema accepts torch's own SGD state_dict (momentum buffers, nesterov, ...)."""
    model = torch.nn.Linear(3, 2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    model(torch.ones(1, 3)).sum().backward()
    sgd.step()
    adam = torch.optim.Adam(model.parameters())
    adam.step()
    buffer = io.BytesIO()
    for optimizer in (sgd, adam):
        buffer.seek(0)
        torch.save(state | {"optimizer": optimizer.state_dict()}, buffer)
        buffer.seek(0)
        Checkpoint.from_state(torch.load(buffer, weights_only=True), "c")


# -- resume: optimiser buffers against the parameters ---------------------------------------------------
def test_check_optimizer_fits_finds_a_momentum_buffer_of_another_shape(state: dict) -> None:
    """torch's load_state_dict accepts it; the first SGD step then dies with a traceback."""
    from idml.checkpoint.schema import check_optimizer_fits
    from idml.models.registry import build_from_spec
    from idml.models.spec import ModelSpec

    params = list(build_from_spec(ModelSpec(**state["model"])).parameters())
    check_optimizer_fits(state["optimizer"], params, "c")  # the run's own state fits
    state["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(5)
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sgd.load_state_dict(state["optimizer"])  # the premise: torch does not notice
    with pytest.raises(IdmlError, match=r"optimizer.state\[0\].momentum_buffer has shape \(5,\)"):
        check_optimizer_fits(state["optimizer"], params, "c")
    with pytest.raises(IdmlError, match="holds 31 parameters' state, the model has 30"):
        check_optimizer_fits(state["optimizer"], params[:-1], "c")


def test_resuming_a_momentum_buffer_of_another_shape_is_one_line(run: dict[str, Path], state: dict,
                                                                 tmp_path: Path) -> None:
    """The optimiser state passes torch's own count check but not the shapes: refused before training."""
    first = next(iter(state["optimizer"]["state"]))
    state["optimizer"]["state"][first]["momentum_buffer"] = torch.zeros(3)
    bad = save(state, tmp_path / "bad.pth.tar")
    done = idml_cli("train", "--dataset", "cifar10", "--net_type", "resnet", "--depth", "8", "--no-bottleneck",
                    "--batch_size", "8", "--device", "cpu", "--amp", "off", "--workers", "0", "--epochs", "2",
                    "--no-verbose", "--data_dir", str(run["data"]), "--output_dir", str(tmp_path), "--expname", "r2",
                    "--resume", str(bad))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "momentum_buffer" in done.stderr


MODEL = {"net_type": "resnet", "dataset": "cifar10", "depth": 1}


def test_permissions_follow_the_umask(tmp_path: Path) -> None:
    path = save_checkpoint(Checkpoint(model=MODEL, state_dict={}), tmp_path / "checkpoint.pth.tar")
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_failed_save_keeps_the_previous_file(tmp_path: Path) -> None:
    path = save_checkpoint(Checkpoint(model=MODEL, state_dict={"w": torch.ones(2)}), tmp_path / "checkpoint.pth.tar")
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises for an unpicklable object
        atomic_write(path, lambda fh: torch.save({"bad": lambda: None}, fh))

    assert torch.equal(load_checkpoint(path).state_dict["w"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.pth.tar"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "does not exist"), (b"not a checkpoint", "cannot load"), ("list", "not an idml checkpoint")],
    ids=["missing", "garbage", "foreign"],
)
def test_load_errors_are_one_line(tmp_path: Path, content, fragment: str) -> None:
    path = tmp_path / "c.pth.tar"
    if content == "list":
        torch.save([1, 2], path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(IdmlError) as info:
        load_checkpoint(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)
