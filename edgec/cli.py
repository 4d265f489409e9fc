"""The `edgec` command: build | estimate | simulate | report | inspect | targets."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np

from edgec.errors import EdgecError


def _design_options(args: argparse.Namespace):
    from edgec.pipeline.design import DesignOptions

    return DesignOptions(
        part=args.part,
        clock_ns=args.clock_ns,
        backend=args.backend,
        io_type=args.io_type,
        strategy=args.strategy,
        reuse_factor=args.reuse_factor,
        precision=args.precision,
    )


def _placement_overrides(items: list[str] | None) -> dict[str, str]:
    """``--place-node NAME=cpu`` (repeatable) -> {NAME: "cpu"}."""
    from edgec.errors import OptionError

    overrides = {}
    for item in items or []:
        name, sep, where = item.rpartition("=")
        if not sep or not name or where not in ("fpga", "cpu"):
            raise OptionError(f"--place-node {item!r}: write NODE=fpga or NODE=cpu", hint="node names are listed by `edgec inspect MODEL`")
        overrides[name] = where
    return overrides


def _cmd_build(args: argparse.Namespace) -> int:
    from edgec.pipeline.build import build
    from edgec.report import render_summary

    result = build(
        args.model,
        target=args.target,
        output_dir=args.output,
        data=args.data,
        force=args.force,
        min_agreement=args.min_agreement,
        width=args.width,
        progress=lambda line: print(line, flush=True),
        options=_design_options(args),
        prune=args.prune,
        quantize=args.quantize,
        place=args.place,
        placement=_placement_overrides(args.place_node),
        cross=not args.no_cross,
        keep_failed=args.keep_failed,
    )
    print()
    print(render_summary(result.report))
    print(f"\nbuild folder: {result.output_dir}")
    return 0


def _cmd_estimate(args: argparse.Namespace) -> int:
    from edgec.pipeline.estimate import estimate
    from edgec.report import render_summary

    report = estimate(
        args.model,
        target=args.target,
        data=args.data,
        options=_design_options(args),
        width=args.width,
        prune=args.prune,
        quantize=args.quantize,
        place=args.place,
        placement=_placement_overrides(args.place_node),
        progress=lambda line: print(line, file=sys.stderr, flush=True),  # stdout stays the report (pure JSON with --json)
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_summary(report))
    return 0


def _add_design_options(p: argparse.ArgumentParser) -> None:
    """Overrides that reproduce a published hls4ml design (shared by build and estimate)."""
    g = p.add_argument_group("design overrides")
    g.add_argument("--part", help="FPGA part instead of the board's (see targets/parts/parts.yaml)")
    g.add_argument("--clock-ns", type=float, help="clock period in ns instead of the board's default clock")
    g.add_argument("--backend", choices=["vivado", "vitis"], help="HLS backend (default vitis)")
    g.add_argument("--io-type", choices=["io_parallel", "io_stream"], help="hls4ml I/O type (default: by model)")
    g.add_argument("--strategy", choices=["latency", "resource"], help="hls4ml strategy of every Dense/Conv layer")
    g.add_argument("--reuse-factor", type=int, help="reuse factor of every Dense/Conv layer (nearest valid one is used)")
    g.add_argument("--precision", help="one type for every tensor, weight and accumulator, e.g. 'fixed<16,6>'")


def _cmd_simulate(args: argparse.Namespace) -> int:
    from edgec.data import load_data
    from edgec.errors import BuildFolderError
    from edgec.pipeline.build import META_FILE, simulate_folder

    folder = Path(args.build_dir)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise BuildFolderError(f"{folder}: not an edgec build folder (no {META_FILE})", hint="run `edgec build` first")
    meta = json.loads(meta_path.read_text())
    report = json.loads((folder / "report.json").read_text())
    x, y = load_data(args.data, meta["input_shape"])
    simulated = simulate_folder(folder, x, meta)
    model_path = report["model"]["path"]
    line = f"simulated {x.shape[0]} samples"
    if model_path and Path(model_path).is_file():
        from edgec.frontend.load import load_model
        from edgec.verify import compare, output_task, reference_outputs

        loaded = load_model(model_path)
        reference, name = reference_outputs(loaded.model, x, loaded.is_qonnx)
        result = compare(reference, simulated, y, task=output_task(loaded.model))
        line += f": argmax agreement with {name} {result['argmax_agreement'] * 100:.2f}%, max abs error {result['max_abs_error']:.3g}"
        if y is not None:
            line += f", accuracy reference {result['accuracy_reference']:.4f} / C-sim {result['accuracy_simulated']:.4f}"
    elif y is not None:
        line += f": C-sim accuracy {float(np.mean(simulated.argmax(-1) == y)):.4f} (reference model not found at {model_path})"
    print(line)
    if args.output:
        np.save(args.output, simulated)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from edgec.errors import BuildFolderError
    from edgec.report_html import write_html

    folder = Path(args.build_dir)
    report_path = folder / "report.json"
    if not report_path.is_file():
        raise BuildFolderError(f"{folder}: not an edgec build folder (no report.json)", hint="run `edgec build` first")
    try:
        report = json.loads(report_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BuildFolderError(f"{report_path}: not a readable report ({exc})", hint="rebuild with `edgec build --force`") from None
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    html_path = folder / "report.html"
    write_html(report, html_path)
    print(html_path)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from edgec.frontend.inspect import inspect_model, render_inspection
    from edgec.frontend.load import load_model

    info = inspect_model(load_model(args.model))
    print(json.dumps(info, indent=2) if args.json else render_inspection(info))
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    from edgec.targets import list_targets

    print(f"{'name':<14} {'part':<22} {'MHz':>5} {'LUT':>8} {'FF':>8} {'DSP':>6} {'BRAM18':>7}  CPU")
    for t in list_targets():
        cpu = f"{t.cpu.cores}x {t.cpu.name} @ {t.cpu.clock_mhz:g} MHz" if t.cpu else "-"
        if t.has_fpga:
            r = t.resources
            print(f"{t.name:<14} {t.part:<22} {t.clock_mhz:>5g} {r.lut:>8} {r.ff:>8} {r.dsp:>6} {r.bram18:>7}  {cpu}")
        else:  # CPU-only board: no FPGA columns
            print(f"{t.name:<14} {'(CPU only)':<22} {'-':>5} {'-':>8} {'-':>8} {'-':>6} {'-':>7}  {cpu}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgec", description="Compile ONNX/QONNX models to verified FPGA projects.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (and hls4ml's output)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an internal error (for bug reports)")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build an HLS project, compile its C simulation and verify it")
    b.add_argument("model", help="ONNX or QONNX file")
    b.add_argument("--target", default="pynq-z2", help="board name (see `edgec targets`) or a target YAML file")
    b.add_argument("-o", "--output", default="build", help="build folder (default: build)")
    b.add_argument("--data", help=".npz with x (model layout) and optional y labels, or .npy inputs")
    b.add_argument("--force", action="store_true", help="replace an existing build folder")
    b.add_argument(
        "--keep-failed",
        action="store_true",
        help="when the build fails after it started writing, keep what was written in OUTPUT.failed/ for inspection",
    )
    b.add_argument("--min-agreement", type=float, default=0.99, help="fail (exit 3) below this argmax agreement")
    b.add_argument("--width", type=int, default=16, help="bit width of calibrated fixed-point types (default 16)")
    b.add_argument(
        "--place",
        choices=["auto", "fpga", "cpu"],
        default="auto",
        help="where layers run: auto (default: FPGA, with ops hls4ml lacks and layers that do not fit on the board's CPU), fpga or cpu",
    )
    b.add_argument("--place-node", action="append", metavar="NODE=fpga|cpu", help="place one ONNX node (repeatable; wins over --place)")
    b.add_argument("--no-cross", action="store_true", help="build CPU parts for this host only (skip the board's cross-compiled library)")
    b.add_argument(
        "--prune",
        action="append",
        metavar="METHOD[:key=value,...]",
        help="prune before lowering (repeatable, run in order): magnitude, channels, sensitivity, spp, bnn-latent; "
        "e.g. magnitude:sparsity=0.5,max_drop=0.5",
    )
    b.add_argument(
        "--quantize",
        action="append",
        metavar="METHOD[:key=value,...]",
        help="quantize before lowering, after pruning (repeatable): e.g. fixed:bits=8,per=channel",
    )
    _add_design_options(b)
    b.set_defaults(func=_cmd_build)
    e = sub.add_parser("estimate", help="latency, resources and energy per layer in seconds, without compiling")
    e.add_argument("model", help="ONNX or QONNX file")
    e.add_argument("--target", default="pynq-z2", help="board name (see `edgec targets`) or a target YAML file")
    e.add_argument("--data", help="calibration inputs (.npz/.npy); random inputs from the input's domain otherwise")
    e.add_argument("--width", type=int, default=16, help="bit width of calibrated fixed-point types (default 16)")
    e.add_argument("--json", action="store_true", help="print only the JSON report (layers, totals, cost_model)")
    e.add_argument("--prune", action="append", metavar="METHOD[:key=value,...]", help="prune first (as in build)")
    e.add_argument(
        "--place",
        choices=["auto", "fpga", "cpu"],
        default="auto",
        help="as in build (auto: ops hls4ml lacks and layers that do not fit are costed on the board's CPU); "
        "fpga costs every op as hls4ml would implement it",
    )
    e.add_argument("--place-node", action="append", metavar="NODE=fpga|cpu", help="place one ONNX node (as in build)")
    e.add_argument(
        "--quantize",
        action="append",
        metavar="METHOD[:key=value,...]",
        help="quantize after pruning (as in build): the estimate is the quantized build's design",
    )
    _add_design_options(e)
    e.set_defaults(func=_cmd_estimate)
    s = sub.add_parser("simulate", help="run a build's C simulation on new inputs")
    s.add_argument("build_dir")
    s.add_argument("--data", required=True, help=".npz with x and optional y, or .npy")
    s.add_argument("--output", help="save the simulated outputs to this .npy")
    s.set_defaults(func=_cmd_simulate)
    r = sub.add_parser("report", help="re-render a build's report.html (default) or print its report.json")
    r.add_argument("build_dir")
    r_fmt = r.add_mutually_exclusive_group()
    r_fmt.add_argument("--html", action="store_true", help="rewrite BUILD_DIR/report.html and print its path (default)")
    r_fmt.add_argument("--json", action="store_true", help="print the report JSON to stdout")
    r.set_defaults(func=_cmd_report)
    i = sub.add_parser("inspect", help="list layers, shapes, MACs, quantization and unsupported ops")
    i.add_argument("model")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_cmd_inspect)
    t = sub.add_parser("targets", help="list the boards")
    t.set_defaults(func=_cmd_targets)
    for command in (b, e, s, r, i, t):  # also accepted after the command: `edgec build m.onnx --debug`
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from edgec.steps import internal_error

    try:
        return args.func(args)
    except EdgecError as exc:
        if args.debug and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=sys.stderr)
        print(f"edgec: error: {exc.user_message()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgec: interrupted", file=sys.stderr)
        return 130
    except (Exception, RecursionError, MemoryError) as exc:  # a bug: one line (the traceback with --debug)
        error = internal_error(exc, args.command)
        if args.debug:
            traceback.print_exception(exc, file=sys.stderr)
        print(f"edgec: error: {error.user_message()}", file=sys.stderr)
        return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
