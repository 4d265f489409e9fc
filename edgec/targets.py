"""Board targets: one YAML file per board in ``targets/``, loaded into a typed object."""

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
    """The board's application processor, as the CPU backend needs it."""

    name: str
    cores: int
    clock_mhz: float
    isa: str
    simd: str = ""
    tvm_target: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """A board: FPGA part, fabric clock, resources and CPU. Loaded from ``targets/<name>.yaml``."""

    name: str
    description: str
    part: str
    family: str
    clock_mhz: float
    resources: FpgaResources
    dsp_kind: str
    cpu: CpuSpec | None
    power: dict
    sources: list[str]

    @property
    def clock_period_ns(self) -> float:
        return 1000.0 / self.clock_mhz

    def to_report(self) -> dict:
        return {"name": self.name, "part": self.part, "clock_mhz": self.clock_mhz}


def _targets_dir() -> Path:
    return TARGETS_DIR


def target_names() -> list[str]:
    """Names of all known boards, sorted."""
    return sorted(p.stem for p in _targets_dir().glob("*.yaml"))


def load_target(name_or_path: str) -> Target:
    """Load a target by board name (``pynq-z2``) or by path to a YAML file."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = _targets_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(target_names())
        raise UnknownTargetError(f"unknown target '{name_or_path}'", hint=f"known targets: {known}")
    raw = yaml.safe_load(path.read_text())
    fpga = raw["fpga"]
    cpu_raw = raw.get("cpu")
    cpu = (
        CpuSpec(
            name=cpu_raw["name"],
            cores=int(cpu_raw["cores"]),
            clock_mhz=float(cpu_raw["clock_mhz"]),
            isa=cpu_raw["isa"],
            simd=cpu_raw.get("simd", ""),
            tvm_target=cpu_raw.get("tvm_target", {}),
        )
        if cpu_raw
        else None
    )
    res = fpga["resources"]
    return Target(
        name=raw["name"],
        description=raw.get("description", ""),
        part=fpga["part"],
        family=fpga["family"],
        clock_mhz=float(fpga["default_clock_mhz"]),
        resources=FpgaResources(
            lut=int(res["lut"]),
            ff=int(res["ff"]),
            dsp=int(res["dsp"]),
            bram18=int(res["bram18"]),
            uram=int(res.get("uram", 0)),
        ),
        dsp_kind=fpga["dsp_kind"],
        cpu=cpu,
        power=raw.get("power", {}),
        sources=list(raw.get("sources", [])),
    )


def list_targets() -> list[Target]:
    """All known boards, loaded."""
    return [load_target(n) for n in target_names()]
