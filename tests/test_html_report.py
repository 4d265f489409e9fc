"""report.html: rendered from a real build, opened in headless Chromium, and `edgec report`."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

import edgec
from edgec.cli import main
from edgec.report_html import render_html

DATA = Path(__file__).parent / "data"
FIGURE_IDS = ["fig-cycles", "fig-resources", "fig-energy", "fig-work"]
COST_FIGURES = ["fig-cycles", "fig-resources", "fig-energy"]
# Without the background-networking/component/sync flags Chromium waits on the closed network.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
CHROMIUM_TIMEOUT_S = 120
PARAMS_BAR_RGB = (0x55, 0xA8, 0x68)  # fig-work's parameter bars: drawn only inside a matplotlib PNG


class _Figures(HTMLParser):
    """Collects, per <figure id=...>, the <img> sources, the number of <svg> elements and the text."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, dict] = {}
        self.classes: dict[str, str] = {}
        self.text: list[str] = []
        self._current: str | None = None
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "figure" and a.get("id"):
            self._current, self._depth = a["id"], 0
            self.figures[a["id"]] = {"imgs": [], "svgs": 0, "text": ""}
            self.classes[a["id"]] = a.get("class") or ""
        if self._current is None:
            return
        if tag == "figure":
            self._depth += 1
        elif tag == "img":
            self.figures[self._current]["imgs"].append(a.get("src") or "")
        elif tag == "svg":
            self.figures[self._current]["svgs"] += 1

    def handle_endtag(self, tag: str) -> None:
        if self._current is not None and tag == "figure":
            self._depth -= 1
            if self._depth == 0:
                self._current = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._current is not None:
            self.figures[self._current]["text"] += data


def _parse(html: str) -> _Figures:
    parser = _Figures()
    parser.feed(html)
    return parser


def _text(parsed: _Figures) -> str:
    return re.sub(r"\s+", " ", " ".join(parsed.text))


def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(
            "chromium is not on PATH: `make test` installs it (Debian package `chromium`, "
            "`apt-get install --no-install-recommends chromium`); these tests render report.html in it",
            pytrace=False,
        )
    return exe


def _run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    """Run headless Chromium with a time limit; on timeout kill its whole process group (renderers too)."""
    cmd = [_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {CHROMIUM_TIMEOUT_S} s: {' '.join(cmd)}", pytrace=False)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _has_cost(report: dict) -> dict[str, bool]:
    """Which cost figures the report has data for (cost fields are optional in report.json)."""
    layers = report["layers"]
    totals = report.get("totals") or {}
    return {
        "fig-cycles": any(layer.get("cycles") is not None for layer in layers),
        "fig-resources": bool(totals.get("utilization") or (totals.get("resources") and totals.get("available"))),
        "fig-energy": bool(totals.get("energy_breakdown_uj") or any(layer.get("energy_nj") is not None for layer in layers)),
    }


def _png_bytes(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,"), src[:60]
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return data


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html_report") / "three_layer_keras"
    edgec.build(DATA / "three_layer_keras.onnx", target="pynq-z2", output_dir=out)
    return out


def test_build_writes_report_html(build_dir):
    assert (build_dir / "report.json").is_file()
    assert (build_dir / "report.html").is_file(), (
        "edgec.build did not write report.html next to report.json: edgec/pipeline/build.py must call "
        "edgec.report_html.write_html(report, staging / 'report.html') after write_report(...)"
    )


@pytest.mark.heavy
def test_report_html_renders_in_chromium(build_dir, tmp_path, capsys):
    assert main(["report", str(build_dir), "--html"]) == 0
    html_path = build_dir / "report.html"
    assert capsys.readouterr().out.strip() == str(html_path)
    report = json.loads((build_dir / "report.json").read_text())
    source = html_path.read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", source), "report.html must not load anything from the network"

    dom = _run_chromium(["--dump-dom", html_path.as_uri()], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    parsed = _parse(dom.stdout)
    text = _text(parsed)

    # every figure is there, with a PNG (or SVG) inside, or says plainly that there is no estimate
    assert set(FIGURE_IDS) <= set(parsed.figures), sorted(parsed.figures)
    assert all("edgec-figure" in parsed.classes[f] for f in FIGURE_IDS)
    has_cost = _has_cost(report) | {"fig-work": True}
    for fig_id in FIGURE_IDS:
        fig = parsed.figures[fig_id]
        if has_cost[fig_id]:
            assert fig["imgs"] or fig["svgs"], f"{fig_id} has no image"
            for src in fig["imgs"]:
                assert len(_png_bytes(src)) > 5_000, f"{fig_id}: suspiciously small PNG"
        else:
            assert not fig["imgs"] and "no cost estimate" in fig["text"], fig_id

    # headline summary and the layer table
    assert Path(report["model"]["path"]).name in text
    assert report["target"]["name"] in text and report["target"]["part"] in text
    assert f"{report['target']['clock_mhz']:g} MHz" in text
    totals = report.get("totals")
    if totals:
        assert f"{totals['cycles']:,} cycles" in text
        assert f"{totals['ii']:,} cycles" in text
        if totals.get("bottleneck"):
            assert totals["bottleneck"] in text
    else:
        assert "no cost estimate" in text
    for layer in report["layers"]:
        assert layer["name"] in text
        if layer["macs"]:
            assert f"{layer['macs']:,}" in text
        result_type = layer["precision"]["result"]
        assert result_type in text  # e.g. fixed<16,7,RND,SAT,0>: escaped in the file, shown verbatim
        assert result_type.replace("<", "&lt;").replace(">", "&gt;") in source

    # verification
    ver = report["verification"]
    assert "Verification" in text and "passed" in text
    assert ver["reference"] in text
    assert f"{ver['argmax_agreement'] * 100:.2f}%" in text
    assert f"{ver['max_abs_error']:.3g}" in text
    for decision in report["decisions"]:
        assert decision in text

    # a screenshot: a page-sized, non-blank PNG in which the figure bars were actually drawn
    from PIL import Image

    shot = tmp_path / "report.png"
    run = _run_chromium([f"--screenshot={shot}", "--window-size=1280,4000", html_path.as_uri()], tmp_path / "profile-shot")
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert shot.stat().st_size > 30_000
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.size == (1280, 4000)
        colours = rgb.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "screenshot is (nearly) a single colour"
    bar_pixels = sum(n for n, c in colours if all(abs(a - b) <= 3 for a, b in zip(c, PARAMS_BAR_RGB)))
    assert bar_pixels > 500, "the fig-work PNG was not drawn in the screenshot"


def test_report_json_prints_the_report(build_dir, capsys):
    assert main(["report", str(build_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((build_dir / "report.json").read_text())


def test_report_on_a_folder_that_is_not_a_build(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 21
    err = capsys.readouterr().err
    assert "not an edgec build folder" in err and "Traceback" not in err
    assert not (tmp_path / "report.html").exists()


def test_render_without_cost_or_verification(build_dir):
    # an `edgec estimate`-style report: no simulation, and (until the cost model lands) no cost fields
    report = json.loads((build_dir / "report.json").read_text())
    report["verification"] = None
    for key in ("totals", "cost_model", "warnings"):
        report.pop(key, None)
    for layer in report["layers"]:
        for key in ("cycles", "ii", "latency_ns", "resources", "energy_nj", "energy_breakdown_nj"):
            layer.pop(key, None)
    parsed = _parse(render_html(report))
    text = _text(parsed)
    assert "No C simulation" in text
    assert "no cost estimate" in text
    for fig_id in COST_FIGURES:
        assert not parsed.figures[fig_id]["imgs"] and "no cost estimate" in parsed.figures[fig_id]["text"]
    assert parsed.figures["fig-work"]["imgs"]


def test_render_with_cost_fields(build_dir):
    # The real build's report with cost fields in the schema the cost model writes (numbers made up
    # here, only to exercise the renderer): every figure is drawn and text from the report is escaped.
    report = copy.deepcopy(json.loads((build_dir / "report.json").read_text()))
    parts = ("compute", "memory", "io", "static")
    for i, layer in enumerate(report["layers"]):
        layer.update(
            cycles=10 + 5 * i,
            ii=2 + i,
            latency_ns=(10 + 5 * i) * 10.0,
            resources={"lut": 100 * (i + 1), "ff": 150 * (i + 1), "dsp": 2 * i, "bram18": i % 2},
            energy_nj=4.0 + i,
            energy_breakdown_nj=dict(zip(parts, (1.0 + i, 1.5, 0.5, 1.0))),
        )
    used = {"lut": 1000, "ff": 1500, "dsp": 250, "bram18": 3}
    available = {"lut": 53200, "ff": 106400, "dsp": 220, "bram18": 280}
    bottleneck = report["layers"][-1]["name"]
    report["totals"] = {
        "cycles": 1234,
        "latency_us": 12.34,
        "ii": 56,
        "throughput_fps": 1.0e8 / 56,
        "resources": used,
        "available": available,
        "utilization": {k: used[k] / available[k] for k in used},
        "energy_uj": 0.05,
        "energy_breakdown_uj": dict(zip(parts, (0.02, 0.015, 0.005, 0.01))),
        "edp": 0.617,
        "units": {"edp": "uJ*us"},
        "bottleneck": bottleneck,
    }
    report["cost_model"] = {
        "version": "test",
        "sources": ["UG479 <DSP48E1>"],
        "clock_ns": 10.0,
        "backend": "Vivado",
        "part": "xc7z020clg400-1",
    }
    report["warnings"] = ["DSP at 114% of pynq-z2 <script>alert(1)</script>"]

    html = render_html(report)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    parsed = _parse(html)
    text = _text(parsed)
    for fig_id in FIGURE_IDS:
        assert len(parsed.figures[fig_id]["imgs"]) == 1, fig_id
        _png_bytes(parsed.figures[fig_id]["imgs"][0])
    assert "no cost estimate" not in text
    assert "12.34 µs" in text and "1,234 cycles" in text and "56 cycles" in text
    assert "1,785,714 fps" in text and "0.05 µJ" in text and "0.617 uJ*us" in text
    assert "113.6%" in text and "250 / 220" in text  # DSP over the board
    assert "UG479 <DSP48E1>" in text
    assert bottleneck in text and 'class="bottleneck"' in html
