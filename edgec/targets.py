"""Board targets: one YAML file per board in ``targets/``, loaded into a typed object.

A board has an FPGA (``fpga:``), an application CPU (``cpu:``), or both. CPU-only boards
(``x86-64``, ``rpi4``, ``cortex-a9``) have no ``fpga:`` section: their FPGA fields are ``None``
and :attr:`Target.has_fpga` is false.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edgec.errors import UnknownTargetError

# Board files live in the repository's targets/ folder (edgec is installed editable, `pip install -e .`).
TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"


@dataclass(frozen=True)
class FpgaResources:
    """Programmable-logic resources of one device (from the vendor's data sheet)."""

    lut: int
    ff: int
    dsp: int
    bram18: int
    uram: int = 0


@dataclass(frozen=True)
class CpuSpec:
    """The board's application processor, as the CPU backend (TVM) and the CPU cost model need it.

    Per-core figures: ``fp32_macs_per_cycle``/``int8_macs_per_cycle`` are the SIMD peak of one core,
    ``active_power_w`` the extra power of one busy core. ``dram_bandwidth_gbs`` is the theoretical
    peak of the board's DRAM interface. Every value is cited in the board's YAML file.
    """

    name: str
    cores: int
    clock_mhz: float
    isa: str
    simd: str = ""
    tvm_target: dict = field(default_factory=dict)
    cross_compiler: str = ""
    elf_machine: str = ""
    fp32_macs_per_cycle: float = 0.0
    int8_macs_per_cycle: float = 0.0
    dram_bandwidth_gbs: float = 0.0
    l2_kb: int = 0
    active_power_w: float = 0.0
    sparse_cycles_per_nnz: float | None = None

    @property
    def arch(self) -> str:
        """Architecture tag of the cross-built library's file name: the first field of the LLVM triple.

        ``armv7a-linux-gnueabihf`` -> ``armv7a``, ``aarch64-linux-gnu`` -> ``aarch64``; empty when the
        target has no ``mtriple``.
        """
        triple = str(self.tvm_target.get("mtriple", ""))
        return triple.split("-", 1)[0] if triple else ""


@dataclass(frozen=True)
class Target:
    """A board: FPGA part, fabric clock, resources and CPU. Loaded from ``targets/<name>.yaml``.

    The FPGA fields (``part``, ``family``, ``clock_mhz``, ``resources``, ``dsp_kind``) are ``None`` for
    CPU-only boards.
    """

    name: str
    description: str
    part: str | None
    family: str | None
    clock_mhz: float | None
    resources: FpgaResources | None
    dsp_kind: str | None
    cpu: CpuSpec | None
    power: dict
    sources: list[str]
    board_part: str | None = None  # Vivado board-file pattern (get_board_parts), used by the deploy bundle when installed

    @property
    def has_fpga(self) -> bool:
        """True when the board has programmable logic (an ``fpga:`` section)."""
        return self.part is not None

    @property
    def clock_period_ns(self) -> float:
        """Period of the default fabric clock; CPU-only boards have none."""
        self.require_fpga()
        return 1000.0 / self.clock_mhz

    def require_fpga(self) -> None:
        """Raise a clear :class:`UnknownTargetError` when the board has no FPGA."""
        if not self.has_fpga:
            raise UnknownTargetError(
                f"target '{self.name}' has no FPGA (it is a CPU-only board: {self.cpu.name if self.cpu else 'no CPU either'})",
                hint="choose a board with an FPGA (see `edgec targets`)",
            )

    def to_report(self) -> dict:
        """The target as report.json records it (name, FPGA part and fabric clock; None for CPU-only boards)."""
        return {"name": self.name, "part": self.part, "clock_mhz": self.clock_mhz}


def _targets_dir() -> Path:
    return TARGETS_DIR


def target_names() -> list[str]:
    """Names of all known boards, sorted."""
    return sorted(p.stem for p in _targets_dir().glob("*.yaml"))


def _optional_float(raw: dict, key: str) -> float | None:
    value = raw.get(key)
    return None if value is None else float(value)


def _load_cpu(cpu_raw: dict | None) -> CpuSpec | None:
    if not cpu_raw:
        return None
    return CpuSpec(
        name=cpu_raw["name"],
        cores=int(cpu_raw["cores"]),
        clock_mhz=float(cpu_raw["clock_mhz"]),
        isa=cpu_raw["isa"],
        simd=cpu_raw.get("simd", ""),
        tvm_target=dict(cpu_raw.get("tvm_target", {}) or {}),
        cross_compiler=cpu_raw.get("cross_compiler", "") or "",
        elf_machine=cpu_raw.get("elf_machine", "") or "",
        fp32_macs_per_cycle=float(cpu_raw.get("fp32_macs_per_cycle", 0.0)),
        int8_macs_per_cycle=float(cpu_raw.get("int8_macs_per_cycle", 0.0)),
        dram_bandwidth_gbs=float(cpu_raw.get("dram_bandwidth_gbs", 0.0)),
        l2_kb=int(cpu_raw.get("l2_kb", 0)),
        active_power_w=float(cpu_raw.get("active_power_w", 0.0)),
        sparse_cycles_per_nnz=_optional_float(cpu_raw, "sparse_cycles_per_nnz"),
    )


def load_target(name_or_path: str) -> Target:
    """Load a target by board name (``pynq-z2``) or by path to a YAML file."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = _targets_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(target_names())
        raise UnknownTargetError(f"unknown target '{name_or_path}'", hint=f"known targets: {known}")
    raw = yaml.safe_load(path.read_text())
    fpga = raw.get("fpga")
    cpu = _load_cpu(raw.get("cpu"))
    if not fpga and cpu is None:
        raise UnknownTargetError(
            f"target file {path} has neither an 'fpga:' nor a 'cpu:' section", hint="see targets/*.yaml for the format"
        )
    res = fpga["resources"] if fpga else None
    return Target(
        name=raw["name"],
        description=raw.get("description", ""),
        part=fpga["part"] if fpga else None,
        family=fpga["family"] if fpga else None,
        clock_mhz=float(fpga["default_clock_mhz"]) if fpga else None,
        resources=FpgaResources(
            lut=int(res["lut"]),
            ff=int(res["ff"]),
            dsp=int(res["dsp"]),
            bram18=int(res["bram18"]),
            uram=int(res.get("uram", 0)),
        )
        if res
        else None,
        dsp_kind=fpga["dsp_kind"] if fpga else None,
        cpu=cpu,
        power=raw.get("power", {}) or {},
        sources=list(raw.get("sources", [])),
        board_part=fpga.get("board_part") if fpga else None,
    )


def list_targets() -> list[Target]:
    """All known boards, loaded."""
    return [load_target(n) for n in target_names()]
