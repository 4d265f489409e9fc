"""The device a design is costed for: part, family, DSP slice, speed, clock and resources.

Built from a board target, optionally overridden (``--part``, ``--clock-ns``, ``--backend``) so a
published design on another part can be reproduced. Part figures are data (targets/parts/parts.yaml).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from edgec.errors import OptionError
from edgec.targets import TARGETS_DIR, FpgaResources, Target

PARTS_FILE = TARGETS_DIR / "parts" / "parts.yaml"
BACKENDS = ("vivado", "vitis")

# Vivado/Vitis HLS schedule against the clock period minus a default uncertainty of 12.5%
# (UG902 Vivado HLS User Guide, "Specifying the Clock Frequency"; UG1399 Vitis HLS, same default).
CLOCK_UNCERTAINTY = 0.125

# Logic speed relative to an UltraScale+ -2 part (1.0 = as fast). Ratio of the DSP slices'
# fully-pipelined F_MAX in the data sheets: DS925 Zynq UltraScale+ (DSP48E2, -3: 891 MHz, -2:
# 775 MHz, -1: 645 MHz) against DS187 Zynq-7000 / DS181 Artix-7 (DSP48E1, -3: 628, -2: 550, -1:
# 464 MHz).
# The delay constants of edgec.cost.cycles are calibrated on UltraScale+ -2 and scaled by this.
SPEED_FACTOR = {
    ("ultrascale+", 3): 775 / 891,
    ("ultrascale+", 2): 1.0,
    ("ultrascale+", 1): 775 / 645,
    ("7series", 3): 775 / 628,
    ("7series", 2): 775 / 550,
    ("7series", 1): 775 / 464,
}
FAMILY_GENERATION = {
    "zynq7000": "7series",
    "artix7": "7series",
    "kintex7": "7series",
    "virtex7": "7series",
    "spartan7": "7series",
    "zynqus": "ultrascale+",
    "virtexus": "ultrascale+",
    "kintexus": "ultrascale+",
    "versal": "ultrascale+",
}


@dataclass(frozen=True)
class Device:
    """Everything the cost models need to know about where the design runs."""

    part: str
    family: str
    dsp_kind: str
    speed_grade: int
    clock_ns: float
    resources: FpgaResources
    backend: str = "vitis"

    @property
    def generation(self) -> str:
        return FAMILY_GENERATION.get(self.family, "7series")

    @property
    def speed_factor(self) -> float:
        return SPEED_FACTOR.get((self.generation, self.speed_grade), SPEED_FACTOR[(self.generation, 1)])

    @property
    def effective_period_ns(self) -> float:
        """The period HLS schedules operations into."""
        return self.clock_ns * (1.0 - CLOCK_UNCERTAINTY)

    @property
    def clock_mhz(self) -> float:
        return 1000.0 / self.clock_ns


def _load_parts() -> dict:
    return yaml.safe_load(Path(PARTS_FILE).read_text())["parts"]


def _speed_from_part(part: str) -> int:
    match = re.search(r"-(\d)(?:L|LV|E|I)?(?:-[a-z])?$", part, re.IGNORECASE)
    return int(match.group(1)) if match else 1


def device_for(target: Target, part: str | None = None, clock_ns: float | None = None, backend: str | None = None) -> Device:
    """The device of ``target``, with the overrides given."""
    backend = (backend or "vitis").lower()
    if backend not in BACKENDS:
        raise OptionError(f"unknown HLS backend '{backend}'", hint=f"use one of: {', '.join(BACKENDS)}")
    if clock_ns is not None and not (0.5 <= clock_ns <= 100):
        raise OptionError(f"clock period {clock_ns} ns is out of range", hint="give --clock-ns between 0.5 and 100")
    device = Device(
        part=target.part,
        family=target.family,
        dsp_kind=target.dsp_kind,
        speed_grade=_speed_from_part(target.part),
        clock_ns=target.clock_period_ns,
        resources=target.resources,
        backend=backend,
    )
    if part and part != target.part:
        parts = _load_parts()
        if part not in parts:
            raise OptionError(f"unknown FPGA part '{part}'", hint=f"known parts: {', '.join(sorted(parts))} (add one to {PARTS_FILE})")
        record = parts[part]
        res = record["resources"]
        device = replace(
            device,
            part=part,
            family=record["family"],
            dsp_kind=record["dsp_kind"],
            speed_grade=int(record.get("speed_grade", _speed_from_part(part))),
            resources=FpgaResources(
                lut=int(res["lut"]), ff=int(res["ff"]), dsp=int(res["dsp"]), bram18=int(res["bram18"]), uram=int(res.get("uram", 0))
            ),
        )
    if clock_ns is not None:
        device = replace(device, clock_ns=float(clock_ns))
    return device


# DSP48E1 multiplies 25x18 signed operands (UG479, 7 Series DSP48E1 User Guide, ch. 1); DSP48E2
# multiplies 27x18 (UG579, UltraScale DSP48E2 User Guide, ch. 1). A product wider than that needs
# several slices.
DSP_PORTS = {"DSP48E1": (25, 18), "DSP48E2": (27, 18)}


def dsp_slices_for_product(a_bits: int, b_bits: int, dsp_kind: str) -> int:
    """DSP slices one a x b-bit signed product needs: an operand wider than its port is split into
    parts one bit narrower (unsigned), and the cheaper assignment of operands to ports is used."""
    port_a, port_b = DSP_PORTS.get(dsp_kind, DSP_PORTS["DSP48E1"])

    def parts(bits: int, port: int) -> int:
        return 1 if bits <= port else math.ceil(bits / (port - 1))

    return min(parts(a_bits, port_a) * parts(b_bits, port_b), parts(a_bits, port_b) * parts(b_bits, port_a))
