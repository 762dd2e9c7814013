"""idml bench: its JSON schema on a tiny model, variant and A/A selection, and bad input."""

import json
import re

import pytest

from idml import cli
from idml.bench import options as bench_options
from idml.bench import step as bench
from idml.commands import bench as bench_command
from idml.errors import ConfigError

TINY = ["--net_type", "resnet", "--dataset", "cifar10", "--depth", "8", "--no-bottleneck",
        "--batch_size", "4", "--device", "cpu", "--beta", "1", "--cutmix_prob", "0.5"]


def test_json_output_schema(capsys, monkeypatch):
    monkeypatch.delenv("IDML_MEMORY_FORMAT_TRIAL", raising=False)  # default's format timed, as users' runs do
    assert cli.main(["bench", *TINY, "--steps", "2", "--warmup", "1", "--isolation", "none", "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)  # exactly one JSON object and nothing else
    assert set(result) == {"device", "torch", "threads", "load_average", "config", "results", "ratios", "aa", "rounds"}
    assert result["device"].startswith("cpu") and isinstance(result["torch"], str)
    assert isinstance(result["threads"], int) and result["threads"] >= 1
    assert len(result["load_average"]) == 3
    assert result["config"]["depth"] == 8 and result["config"]["batch_size"] == 4
    assert result["config"]["isolation"] == "none"
    # the A/A copy is reported in "aa", not among the results
    assert [r["variant"] for r in result["results"]] == ["fp32-eager", "default", "default-linear", "data-only"]
    for r in result["results"]:
        assert isinstance(r["images_per_second"], float) and r["images_per_second"] > 0
        assert isinstance(r["peak_memory_mb"], float) and r["peak_memory_mb"] >= 0
    linear, ism = (next(r for r in result["results"] if r["variant"] == v) for v in ("default-linear", "default"))
    assert "linear head" in linear["settings"] and "ISM" in ism["settings"]
    assert set(result["ratios"]) == {"default / fp32-eager", "default / default-linear", "data-only / default"}
    aa = result["aa"]
    assert aa["variant"] == "default" and aa["tolerance"] == 0.03
    progress = err.splitlines()  # on stderr, as the benchmark goes: variant, round, elapsed, estimate
    assert all(re.match(r"idml bench \[\d+ s\]: ", line) for line in progress), err
    assert any(line.endswith("warming up fp32-eager (1/5): 1 untimed step(s)") for line in progress)
    assert sum(bool(re.search(r"round [12]/2 done \(\d+\.\d s\), about \d+ s left, \d+ s in all", line))
               for line in progress) == 2
    if abs(abs(aa["ratio"] - 1) - 0.03) > 0.001:  # "ratio" is rounded to 3 decimals: no verdict on the edge
        assert aa["passed"] == (abs(aa["ratio"] - 1) <= 0.03)
    # rounds: at least --steps, more while the A/A check failed, up to --max_rounds (default 40)
    rounds = result["rounds"]
    assert rounds["min"] == 2 and rounds["max"] == 40 and rounds["max_minutes"] is None
    assert rounds["stopped"] == ("aa-passed" if aa["passed"] else "rounds-cap")
    assert 2 <= rounds["timed"] <= 40 and len(aa["step_seconds"][1]) == rounds["timed"]
    assert all(len(r["step_seconds"]) == rounds["timed"] for r in result["results"])
    # on the CPU, default trains in the memory format a run of these settings takes: timed (or cached)
    how = result["config"]["memory_format"]
    assert how.startswith("memory format: ") and ("timed over" in how or "timed on this machine before" in how)
    chosen = "channels_last" if how.startswith("memory format: channels_last") else "NCHW"
    assert f", {chosen}, eager, ISM" in ism["settings"] and f", {chosen}, eager, linear head" in linear["settings"]


def test_variants_in_worker_processes_table(capsys):
    """The default isolation: each variant (and the A/A copy) in a spawned worker process."""
    assert cli.main(["bench", *TINY, "--steps", "2", "--warmup", "1", "--variants", "fp32-eager,default"]) == 0
    out = capsys.readouterr().out
    assert "isolation process" in out and "default / fp32-eager:" in out
    assert "A/A check (default twice):" in out and ("PASS" in out or "FAIL" in out)


def test_a_forced_format_is_not_timed(capsys, monkeypatch):
    from idml.device import autotune

    monkeypatch.setattr(autotune, "time_formats", lambda *a, **k: pytest.fail("timed a forced format"))
    cfg, _ = bench_command.parse_bench_args([*TINY, "--no-channels_last"])
    assert bench.settled_format(cfg, ["default"]) == (cfg, "")
    cfg, _ = bench_command.parse_bench_args(TINY)
    assert bench.settled_format(cfg, ["fp32-eager", "channels_last"]) == (cfg, "")  # no variant uses the given


def test_variant_selection():
    assert bench_options.chosen_variants(None, "imagenet") == ["fp32-eager", "default", "default-linear"]
    assert bench_options.chosen_variants("compile, default,compile", "digits") == ["compile", "default"]
    with pytest.raises(ConfigError, match="in-memory dataset"):
        bench_options.chosen_variants("data-only", "imagenet")


def test_aa_selection_and_slots():
    names = ["fp32-eager", "default", "data-only"]
    assert bench_options.chosen_aa("auto", names) == "default"
    assert bench_options.chosen_aa("auto", ["fp32-eager", "data-only"]) == "fp32-eager"
    assert bench_options.chosen_aa("none", names) is None
    assert bench_options.chosen_aa("fp32-eager", names) == "fp32-eager"
    with pytest.raises(ConfigError, match="not among the variants"):
        bench_options.chosen_aa("bf16", names)
    cfg, _ = bench_command.parse_bench_args(TINY)
    labels = [s.label for s in bench.variant_slots(cfg, names, "default")]
    assert labels == ["fp32-eager", "default", "default (A/A)", "data-only"]


@pytest.mark.parametrize("bad", [["--variants", "turbo"], ["--steps", "0"], ["--warmup", "-1"], ["--amp", "fp16"],
                                 ["--isolation", "threads"], ["--variants", "default", "--aa", "fp32-eager"],
                                 ["--max_rounds", "0"], ["--max_minutes", "0"], ["--max_minutes", "nan"],
                                 ["--max_minutes", "inf"]])
def test_bad_input_is_one_line_and_exit_2(capsys, bad):
    try:
        code = cli.main(["bench", *TINY, *bad])
    except SystemExit as exit_:  # argparse's exit, for a flag its numeric-flag validator refused
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("idml bench: error:") and err.count("\n") == 1


@pytest.mark.parametrize("name", [n for n in bench_options.MODEL_VARIANTS if not n.startswith("default")])
def test_each_opt_in_variant_runs_what_its_name_says(name):
    """``bf16-channels_last-compile`` is bfloat16, channels_last and compiled; unnamed parts are off."""
    from idml.config import TrainConfig

    given = TrainConfig(amp="fp16", channels_last=True, compile=True, ism=False)  # all different from the names
    cfg = bench_options.MODEL_VARIANTS[name](given)
    parts = set(name.split("-"))
    assert cfg.amp == ("bf16" if "bf16" in parts else "fp16" if "fp16" in parts else "off")
    assert cfg.channels_last is ("channels_last" in parts)
    assert cfg.compile is ("compile" in parts)
    assert cfg.ism  # every variant but default-linear times the ISM head


def test_the_default_variants_keep_the_given_settings():
    from idml.config import TrainConfig

    given = TrainConfig(amp="bf16", channels_last=None, compile=True)
    variant = bench_options.MODEL_VARIANTS["default"](given)
    assert variant == TrainConfig(amp="bf16", channels_last=None, compile=True, ism=True)
    assert not bench_options.MODEL_VARIANTS["default-linear"](given).ism
