"""benchmarks/make_photos.py: ImageNet-like JPEGs from real photos, the same for the same seed."""

import importlib.util
from pathlib import Path

from PIL import Image

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "make_photos.py"


def load_script():
    spec = importlib.util.spec_from_file_location("make_photos", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_photos_of_the_sizes_and_qualities_asked_in_the_imagenet_layout(tmp_path: Path, capsys) -> None:
    make_photos = load_script()
    assert make_photos.main(["--out", str(tmp_path / "a"), "--count", "12", "--val_count", "2",
                             "--sizes", "500x375,375x500", "--quality", "80-90"]) == 0
    files = sorted((tmp_path / "a" / "imagenet-1k" / "train").rglob("*.JPEG"))
    val = list((tmp_path / "a" / "imagenet-1k" / "val").rglob("*.JPEG"))
    assert len(files) == 12 and len(val) == 4 and len({p.parent for p in val}) == 4  # every class in val/
    for path in files:
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.size in ((500, 375), (375, 500))
        assert 80 <= int(path.stem.rsplit("q", 1)[1]) <= 90
        assert path.stat().st_size > 10_000  # a photograph, not a flat colour
    assert "wrote 16 JPEGs" in capsys.readouterr().out
    make_photos.main(["--out", str(tmp_path / "b"), "--count", "12", "--val_count", "2",
                      "--sizes", "500x375,375x500", "--quality", "80-90"])
    again = sorted((tmp_path / "b" / "imagenet-1k" / "train").rglob("*.JPEG"))
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in files]  # the same seed, the same files
