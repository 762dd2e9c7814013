"""What an exported model carries besides its weights, and how it is read back from an untrusted file.

Every format carries the same JSON object (:class:`ExportMetadata`): in ONNX under the
``metadata_props`` key :data:`METADATA_KEY`, in TorchScript as the extra file
:data:`TORCHSCRIPT_FILE`, beside a ``.safetensors`` file as ``<name>.json``. It holds what a user
needs to feed the model (input size, how images are prepared; the mean and std are applied inside
the graph) and to read its outputs (class names, the temperature, the score's name), and where it
came from (idml version, the checkpoint's SHA-256). The schema is in docs/export.md.

Reading it back checks every field with its rule (:data:`METADATA_RULES`: the checkpoint's own
where the field is also a checkpoint's), so a lying or malformed file is one line, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

from idml.checkpoint.schema import CLASS_NAMES, checkpoint_rule
from idml.config import CHANNEL_MEAN, CHANNEL_STD
from idml.data.catalog import MAX_INPUT_SIZE
from idml.data.image_files import PREPARERS
from idml.errors import IdmlError
from idml.rules import Rule, integer, numbers, one_of, optional, text
from idml.scores import LOGIT_SCORE_NAMES

SCHEMA = "idml-export/1"
#: The ONNX ``metadata_props`` key of the JSON object.
METADATA_KEY = "idml"
#: The TorchScript extra file holding the JSON object.
TORCHSCRIPT_FILE = "idml.json"
#: The graph's input: uint8 RGB images, N x 3 x H x W at the checkpoint's input size.
INPUT_NAME = "images"
#: The graph's outputs, in order.
OUTPUT_NAMES = ("logits", "probabilities", "uncertainty")
#: Metadata larger than this is refused before it is parsed (1,000 class names take about 20 kB).
MAX_METADATA_BYTES = 4 * 2**20
SHA256 = text(64, pattern="[0-9a-f]{64}", words="be 64 lowercase hexadecimal digits")

#: field -> its rule; the checkpoint's own where the field is one of a checkpoint's.
METADATA_RULES: dict[str, Rule] = {
    "schema": one_of(SCHEMA),
    "class_names": CLASS_NAMES,
    "input_size": integer(1, MAX_INPUT_SIZE),
    "mean": numbers(3, each=CHANNEL_MEAN),
    "std": numbers(3, each=CHANNEL_STD),
    "temperature": checkpoint_rule("temperature"),
    "score": one_of(*LOGIT_SCORE_NAMES),
    "preparation": one_of(*PREPARERS),
    "weights": one_of("model", "ema"),
    "idml_version": text(100),
    "checkpoint_sha256": SHA256,
    "graph_sha256": optional(SHA256),
    "weights_sha256": optional(SHA256),
    "model": optional(Rule("be the model settings (a dict)", lambda v: isinstance(v, dict))),
}


@dataclass(frozen=True)
class ExportMetadata:
    """The JSON object every exported file carries (docs/export.md, "The metadata")."""

    class_names: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    #: the softmax temperature fitted on the validation split, or None (the graph divides by 1)
    temperature: float | None
    #: the score of :data:`idml.scores.LOGIT_SCORE_NAMES` the ``uncertainty`` output is
    score: str
    #: how images are prepared (a key of :data:`idml.data.image_files.PREPARERS`)
    preparation: str
    #: which weights of the checkpoint: "model", or "ema" (its moving average, ``--ema``)
    weights: str
    idml_version: str
    checkpoint_sha256: str
    #: ONNX: SHA-256 of the serialised graph (weights included), to tell a damaged file
    graph_sha256: str | None = None
    #: safetensors: SHA-256 of the .safetensors file the JSON belongs to
    weights_sha256: str | None = None
    #: safetensors: the model settings (:class:`idml.models.ModelSpec`) to rebuild the network from
    model: dict | None = None
    schema: str = SCHEMA

    @property
    def divisor(self) -> float:
        """What the graph divides the logits by before the softmax."""
        return 1.0 if self.temperature is None else self.temperature

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> ExportMetadata:
        """Parse and check an untrusted JSON object; ``where`` names the file in the one-line error."""
        def fail(detail: str) -> IdmlError:
            return IdmlError(f"{where}: its idml metadata is malformed ({detail}); export the checkpoint again")

        if len(text) > MAX_METADATA_BYTES:
            raise fail(f"{len(text)} bytes, more than {MAX_METADATA_BYTES}")
        try:
            values = json.loads(text)
        except (ValueError, RecursionError) as exc:  # RecursionError: thousands of nested brackets
            raise fail(f"not JSON: {str(exc)[:80] or type(exc).__name__}") from exc
        if not isinstance(values, dict):
            raise fail("not a JSON object")
        for field in fields(cls):
            if field.name not in values:
                if field.default is MISSING:
                    raise fail(f"field {field.name} is missing")
                continue
            problem = METADATA_RULES[field.name].problem(f"field {field.name}", values[field.name], specific=False)
            if problem:
                raise fail(problem)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks (memory stays small whatever its size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
