"""idml bench: its JSON schema on a tiny model, variant selection and bad input."""

import json

import pytest

from idml import cli
from idml.commands import bench
from idml.errors import ConfigError

TINY = ["--net_type", "resnet", "--dataset", "cifar10", "--depth", "8", "--no-bottleneck",
        "--batch_size", "4", "--device", "cpu", "--beta", "1", "--cutmix_prob", "0.5"]


def test_json_output_schema(capsys):
    assert cli.main(["bench", *TINY, "--steps", "1", "--warmup", "1", "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out)  # exactly one JSON object and nothing else
    assert set(result) == {"device", "torch", "threads", "config", "results"}
    assert result["device"].startswith("cpu") and isinstance(result["torch"], str)
    assert isinstance(result["threads"], int) and result["threads"] >= 1
    assert result["config"]["depth"] == 8 and result["config"]["batch_size"] == 4
    assert [r["variant"] for r in result["results"]] == ["fp32-eager", "default", "default-linear", "data-only"]
    for r in result["results"]:
        assert isinstance(r["images_per_second"], float) and r["images_per_second"] > 0
        assert isinstance(r["peak_memory_mb"], float) and r["peak_memory_mb"] >= 0
    linear, ism = (next(r for r in result["results"] if r["variant"] == v) for v in ("default-linear", "default"))
    assert "linear head" in linear["settings"] and "ISM" in ism["settings"]


def test_table_output_names_every_variant_and_ratio(capsys):
    assert cli.main(["bench", *TINY, "--steps", "1", "--warmup", "0", "--variants", "fp32-eager,default"]) == 0
    out = capsys.readouterr().out
    assert "fp32-eager" in out and "default / fp32-eager:" in out


def test_variant_selection():
    assert bench.chosen_variants(None, "imagenet") == ["fp32-eager", "default", "default-linear"]
    assert bench.chosen_variants("compile, default,compile", "digits") == ["compile", "default"]
    with pytest.raises(ConfigError, match="in-memory dataset"):
        bench.chosen_variants("data-only", "imagenet")


@pytest.mark.parametrize("bad", [["--variants", "turbo"], ["--steps", "0"], ["--warmup", "-1"], ["--amp", "fp16"]])
def test_bad_input_is_one_line_and_exit_2(capsys, bad):
    assert cli.main(["bench", *TINY, *bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("idml bench: error:") and err.count("\n") == 1
