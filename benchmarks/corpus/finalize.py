"""Merge the generators' fragments into tests/corpus/manifest.json (main venv).

    .venv/bin/python benchmarks/corpus/finalize.py

Adds what is measured on the files with check_corpus.measure (opset, IR version, declared input and
output shapes, held-out accuracy with onnxruntime or qonnx execution, size) and the dev/check split.

Split rule (fixed, independent of how hard a model looks): a model is ``check`` when the first 8 hex
digits of sha256(name), as an integer, modulo 1000 are below 270 (about 27%). Then, for every family with
at least 3 models and no check model, the model with the smallest such value becomes ``check``; and
while more than 30% are ``check``, the check model with the largest value (in a family that keeps
another check model) goes back to ``dev``, and while fewer than 25% are, the dev model with the
smallest value becomes ``check``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_corpus import CORPUS, MANIFEST, measure  # noqa: E402

KEY_ORDER = [
    "name",
    "file",
    "data",
    "family",
    "exporter",
    "exporter_version",
    "framework_version",
    "opset",
    "ir_version",
    "options",
    "features",
    "task",
    "trained_on",
    "heldout_accuracy",
    "input_shape",
    "output_shape",
    "size",
    "split",
    "size_kb",
    "input_dtype",
    "opset_imports",
    "runtime",
    "checker",
    "extra_files",
    "generator",
    "notes",
]


def split_key(name: str) -> int:
    """The split rule's value for a name: int(sha256(name)[:8], 16) % 1000."""
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 1000


def assign_splits(entries: list[dict[str, Any]]) -> None:
    """Set ``split`` on every entry by the rule in the module docstring."""
    for e in entries:
        e["split"] = "check" if split_key(e["name"]) < 270 else "dev"
    fams: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        fams.setdefault(e["family"], []).append(e)
    for members in fams.values():
        if len(members) >= 3 and not any(e["split"] == "check" for e in members):
            min(members, key=lambda e: split_key(e["name"]))["split"] = "check"
    n = len(entries)
    while sum(e["split"] == "check" for e in entries) > 0.30 * n:
        movable = [e for e in entries if e["split"] == "check" and sum(m["split"] == "check" for m in fams[e["family"]]) > 1]
        max(movable, key=lambda e: split_key(e["name"]))["split"] = "dev"
    while sum(e["split"] == "check" for e in entries) < 0.25 * n:
        min((e for e in entries if e["split"] == "dev"), key=lambda e: split_key(e["name"]))["split"] = "check"


def main() -> None:
    """Read the fragments, measure every model, assign splits and write the manifest."""
    entries: list[dict[str, Any]] = []
    for frag in sorted((CORPUS / "fragments").glob("gen_*.json")):
        entries += json.loads(frag.read_text())
    entries.sort(key=lambda e: e["name"])
    for e in entries:
        m = measure(e)
        print(f"{e['name']:55s} {m['runtime'][:11]:11s} acc={m['heldout_accuracy']} {m['size_kb']} KB {m['run_seconds']} s", flush=True)
        for k in (
            "opset",
            "ir_version",
            "input_shape",
            "output_shape",
            "heldout_accuracy",
            "size_kb",
            "input_dtype",
            "opset_imports",
            "runtime",
            "checker",
        ):
            e[k] = m[k]
    assign_splits(entries)
    ordered = [{k: e[k] for k in KEY_ORDER if k in e} | {k: v for k, v in e.items() if k not in KEY_ORDER} for e in entries]
    MANIFEST.write_text(json.dumps(ordered, indent=1) + "\n")
    n_check = sum(e["split"] == "check" for e in entries)
    print(f"manifest: {len(entries)} models, {n_check} check -> {MANIFEST.relative_to(CORPUS.parents[1])}")


if __name__ == "__main__":
    main()
