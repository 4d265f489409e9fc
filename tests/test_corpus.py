"""The real-export corpus (tests/corpus: 72 models written by tf2onnx, Keras 3, PyTorch's two exporters,
qonnx's QKeras converter, Brevitas, onnxruntime's quantizers): every file loads, and one model per
exporter family builds for pynq-z2 and verifies against its reference (the slow tier;
``python benchmarks/corpus_build.py`` builds all of them and prints the table)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec.frontend.load import load_model

CORPUS = Path(__file__).parent / "corpus"
MANIFEST = json.loads((CORPUS / "manifest.json").read_text())
BY_NAME = {entry["name"]: entry for entry in MANIFEST}


def _first_of_each_family(split: str = "dev") -> list[str]:
    chosen: dict[str, str] = {}
    for entry in MANIFEST:
        if entry["split"] == split and entry.get("size", "small") == "small" and entry["family"] not in chosen:
            chosen[entry["family"]] = entry["name"]
    return sorted(chosen.values())


def _data(entry: dict):
    if not entry.get("data"):
        return None
    data = np.load(CORPUS / entry["data"])
    return (data["x"], data["y"]) if "y" in data.files else data["x"]


def test_manifest_lists_every_model_file():
    assert len(MANIFEST) >= 40
    for entry in MANIFEST:
        assert (CORPUS / entry["file"]).is_file(), entry["name"]
        assert entry["split"] in ("dev", "check")
    families = {entry["family"] for entry in MANIFEST}
    assert {
        "tf2onnx-keras2",
        "torch-torchscript",
        "torch-dynamo",
        "qkeras-qonnx",
        "brevitas-qonnx",
        "brevitas-qcdq",
        "ort-qdq",
        "ort-qoperator",
    } <= families


@pytest.mark.heavy
@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_every_corpus_model_loads(name):
    """Valid models that onnxruntime or qonnx run are never called corrupt or invalid."""
    loaded = load_model(CORPUS / BY_NAME[name]["file"])
    shape = loaded.model.get_tensor_shape(loaded.model.graph.input[0].name)
    assert shape[0] == 1 and all(isinstance(d, int) and d > 0 for d in shape)


@pytest.mark.slow
@pytest.mark.parametrize("name", _first_of_each_family())
def test_one_model_per_exporter_family_builds_and_verifies(name, tmp_path):
    entry = BY_NAME[name]
    result = edgec.build(CORPUS / entry["file"], target="pynq-z2", output_dir=tmp_path / "build", data=_data(entry), cross=False)
    ver = result.report["verification"]
    assert ver["decisive_agreement"] == 1.0, ver  # the build refuses below 0.99; every corpus model reaches 1.0
    if ver.get("accuracy_reference") is not None:
        assert ver["accuracy_simulated"] >= ver["accuracy_reference"] - 0.02
