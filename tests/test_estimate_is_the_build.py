"""`edgec estimate` runs the build's own steps up to the cost model (issue 13): for the same model and
options its design totals are the build's, exactly, across the options that change the design."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import edgec
from edgec.pipeline.design import DesignOptions
from edgec.pipeline.estimate import estimate

CORPUS = Path(__file__).parent / "corpus"
MANIFEST = {e["name"]: e for e in json.loads((CORPUS / "manifest.json").read_text())}
MLP = "torch_ts_op9_mlp_view_kiai"  # a real TorchScript export: Gemm/MatMul MLP on 8x8 digits


def _data(name: str):
    data = np.load(CORPUS / MANIFEST[name]["data"])
    return data["x"], data["y"]


def _totals(report: dict) -> dict:
    totals = report["totals"]
    return {
        "cycles": totals["cycles"],
        "ii": totals["ii"],
        "latency_us": totals["latency_us"],
        "energy_uj": totals["energy_uj"],
        **totals["resources"],
    }


CASES = {
    "defaults": dict(),
    "8-bit PTQ": dict(quantize=["fixed:bits=8"]),
    "pruned": dict(prune=["magnitude:sparsity=0.6"]),
    "published design options": dict(options=DesignOptions(part="xc7z020clg400-1", clock_ns=5.0, strategy="Resource", reuse_factor=8)),
    "a layer on the CPU": dict(placement={"/fc2/Gemm": "cpu"}),
    "another target": dict(target="zcu104"),
}


@pytest.mark.heavy
@pytest.mark.parametrize("case", list(CASES))
def test_estimate_totals_are_the_build_totals(case, tmp_path):
    kwargs = dict(CASES[case])
    target = kwargs.pop("target", "pynq-z2")
    data = _data(MLP)
    built = edgec.build(CORPUS / MANIFEST[MLP]["file"], target=target, output_dir=tmp_path / "b", data=data, cross=False, **kwargs)
    estimated = estimate(CORPUS / MANIFEST[MLP]["file"], target=target, data=data, **kwargs)
    assert _totals(estimated) == _totals(built.report)
    assert estimated.get("quantization_cost") == built.report.get("quantization_cost")
    if case == "a layer on the CPU":
        assert [s["placement"] for s in estimated["partition"]["segments"]] == ["fpga", "cpu", "fpga"]
