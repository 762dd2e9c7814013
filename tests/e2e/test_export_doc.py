"""docs/export.md as a user runs it: own-data.md's example images and training run (``--epochs 30``
shortened to 2), then export.md's commands as written, then its ten-line snippet in a Python that
cannot import torch, compared with ``idml predict`` and ``idml eval --json`` on the same images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from doc_blocks import ROOT, code_blocks, run_block, section
from runs import fake_venv

DOC = ROOT / "docs" / "export.md"
OWN_DATA = ROOT / "docs" / "own-data.md"
#: A sitecustomize that makes torch (and idml, which needs it) impossible to import.
NO_TORCH = """
import sys
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "idml"):
            raise ImportError(f"{name} is blocked: the snippet must run without PyTorch")
        return None
sys.meta_path.insert(0, _Refuse())
"""


#: the pages' commands run as the README says, in a shell whose environment is active
ACTIVE = 'export PATH="$PWD/.venv/bin:$PATH"\n'


def run(block: str, folder: Path, pythonpath: str | None = None):
    return run_block(ACTIVE + block, folder, pythonpath)


def blocks(language: str, heading: str) -> list[str]:
    return code_blocks(language, section(DOC.read_text(encoding="utf-8"), heading))


def test_the_snippet_is_ten_lines_of_onnxruntime_numpy_and_pillow() -> None:
    (snippet,) = blocks("python3", "Without PyTorch")
    code = [line for line in snippet.splitlines() if line.strip()]
    assert len(code) <= 12, code
    imported = {m for line in code if line.startswith(("import", "from"))
                for m in re.findall(r"\b(json|sys|numpy|onnxruntime|PIL)\b", line)}
    assert imported == {"json", "sys", "numpy", "onnxruntime", "PIL"} and "torch" not in snippet


@pytest.mark.slow
def test_the_page_runs_as_written(tmp_path: Path) -> None:
    fake_venv(tmp_path)
    make_images, own_commands = code_blocks("bash", section(OWN_DATA.read_text(encoding="utf-8"),
                                                            "Train on your own images"))
    assert run(make_images, tmp_path).returncode == 0
    train = own_commands.replace("\\\n", " ").strip().splitlines()[0]
    assert "idml train" in train and "--epochs 30" in train
    trained = run(train.replace("--epochs 30", "--epochs 2"), tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]

    install, commands = blocks("bash", "Export and predict")
    assert install.strip() == 'pip install -e ".[onnx,safetensors]"'  # the extras CI installs
    exported = run(commands, tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert "Traceback" not in exported.stderr
    run_dir = tmp_path / "runs" / "my_images"
    for name in ("my_images.onnx", "my_images.pt", "my_images.safetensors"):
        assert (run_dir / name).stat().st_size > 100_000  # ResNet-20's weights
    assert json.loads((run_dir / "my_images.json").read_text())["class_names"] == ["circle", "square", "triangle"]
    header, *after = exported.stdout[exported.stdout.index("file "):].splitlines()
    assert header.split() == ["file", "uncertainty", "(msp)", "top-1", "top-2", "top-3"]
    assert sum(row.startswith("data/my_images/val/circle/") for row in after) == 25  # idml predict --model
    assert "checked  against idml's outputs" in exported.stdout

    (snippet,) = blocks("python3", "Without PyTorch")
    (usage,) = blocks("bash", "Without PyTorch")
    (tmp_path / "data" / "predict_onnx.py").write_text(snippet)
    blocker = tmp_path / "no_torch"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_TORCH)
    proof = run('python -c "import torch"', tmp_path, pythonpath=str(blocker))
    assert proof.returncode != 0 and "blocked" in proof.stderr
    as_written = run(usage, tmp_path, pythonpath=str(blocker))
    assert as_written.returncode == 0, as_written.stderr
    rows = [line.split() for line in as_written.stdout.splitlines()]
    assert [r[0] for r in rows] == ["data/my_images/val/circle/000.png", "data/my_images/val/square/000.png"]
    assert all(r[1] in ("circle", "square", "triangle") and r[3] == "msp" for r in rows)
    compare_with_idml(tmp_path, blocker)


def compare_with_idml(folder: Path, blocker: Path) -> None:
    """The snippet on every validation image against idml predict (both sources) and idml eval --json."""
    files = sorted(str(p.relative_to(folder)) for p in (folder / "data" / "my_images" / "val").rglob("*.png"))
    snippet = run(f"python data/predict_onnx.py runs/my_images/my_images.onnx {' '.join(files)}", folder,
                        pythonpath=str(blocker))
    assert snippet.returncode == 0, snippet.stderr
    rows = [line.split() for line in snippet.stdout.splitlines()]
    assert [r[0] for r in rows] == files and all(r[3] == "msp" for r in rows)
    for source in ("--checkpoint runs/my_images/model_best.pth.tar --amp off", "--model runs/my_images/my_images.onnx"):
        predicted = run(f"idml predict {source} data/my_images/val --topk 1 --format json", folder)
        assert predicted.returncode == 0, predicted.stderr
        by_file = {r["file"]: r for r in json.loads(predicted.stdout)}
        for path, name, probability, _, uncertainty in rows:
            want = by_file[path]
            assert want["topk"][0]["class"] == name
            np.testing.assert_allclose(float(probability), want["topk"][0]["probability"], rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(float(uncertainty), want["uncertainty"], rtol=1e-4, atol=1e-6)
    evaluated = run("idml eval --checkpoint runs/my_images/model_best.pth.tar --json --amp off",
                          folder)
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    wrong = sum(name != Path(path).parent.name for path, name, *_ in rows)
    assert report["test_images"] == len(rows) == 75
    assert report["top1_err"] == pytest.approx(100.0 * wrong / len(rows))
