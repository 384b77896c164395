"""The precision of the forward pass: bfloat16 where the CPU computes it natively.

A model is saved in float32 (or mixed float16 when trained on a GPU). On a CPU with
AVX512_BF16 or AMX, the same architecture built under Keras's `bfloat16` policy, the saved
weights read into it, scores faster with probabilities within a stated tolerance
(docs/performance.md, tests/integration/test_precision.py). The Dense head stays float32.

`bfloat16`, not `mixed_bfloat16`: a mixed policy keeps float32 weights and casts them at
every call, so the convolutions compute the same numbers either way (measured here: the same
spread against float32), but the mixed model held 225 MB more and ran about 15 % slower.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FLOAT32, BFLOAT16, AS_TRAINED = "float32", "bfloat16", "as trained"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
WEIGHTS_FILE = "model.weights.h5"  # inside a .keras archive (Keras 3)
# Dense layers stay float32: a head sums 1536 features, and bfloat16's 8-bit mantissa moved
# probabilities near the threshold (docs/performance.md); they cost little of the pass.
FLOAT32_LAYERS = ("Dense",)


def cpu_has_bfloat16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU computes bfloat16 natively (its flags, as Linux lists them)."""
    try:
        flags = cpuinfo.read_text(errors="replace").split()
    except OSError:
        return False
    return any(flag in flags for flag in BF16_FLAGS)


def scoring_precision(setting: str, device: str, has_bfloat16: bool | None = None) -> str:
    """What the forward pass runs in: a GPU scores as the model was trained (mixed float16
    when it was); on a CPU, `auto` takes bfloat16 where the CPU has it."""
    if device == "gpu":
        return AS_TRAINED
    if setting != "auto":
        return setting
    native = cpu_has_bfloat16() if has_bfloat16 is None else has_bfloat16
    return BFLOAT16 if native else FLOAT32


def load_in_precision(path: Path, precision: str) -> Any:
    """A saved model, in `precision`. For bfloat16 it is built from the archive's config with
    the policies set and the weights read into it: loading the float32 model and rebuilding
    it would hold both copies of the weights at once, and the process keeps the peak."""
    import keras

    if precision != BFLOAT16:
        return keras.models.load_model(path, compile=False)
    with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as scratch:
        config = json.loads(archive.read("config.json"))
        changed = _to_bfloat16(config)
        network = keras.saving.deserialize_keras_object(config)
        network.load_weights(archive.extract(WEIGHTS_FILE, scratch))
    log.info("scoring in bfloat16: %d layers built under the bfloat16 policy", changed)
    return network


def _to_bfloat16(node: Any) -> int:
    """Set every layer's dtype policy in a serialised model to bfloat16, nested models
    included, except the input and the Dense layers; returns how many were set."""
    changed = 0
    if isinstance(node, dict):
        config = node.get("config")
        if (
            isinstance(config, dict)
            and "class_name" in node
            and node["class_name"] not in ("InputLayer", *FLOAT32_LAYERS)
        ):
            policy = config.get("dtype")
            if isinstance(policy, dict) and policy.get("class_name") == "DTypePolicy":
                policy["config"]["name"] = "bfloat16"
                changed += 1
        for value in node.values():
            changed += _to_bfloat16(value)
    elif isinstance(node, list):
        for value in node:
            changed += _to_bfloat16(value)
    return changed
