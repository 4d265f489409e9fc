"""Whole-system cost of a partitioned design: FPGA segments, CPU segments and the PS<->PL transfers
between them, run one after another for one inference (batch 1).

- Latency adds up along the chain: each FPGA segment's latency (edgec.cost.design), each CPU
  segment's (edgec.cost.cpu, one core), and each transfer between the PS and the PL.
- Throughput: the PS and the PL work concurrently on consecutive inferences when driven as a
  pipeline, so the steady-state interval is the slowest stage (an FPGA segment's II, a CPU segment's
  latency, or a DMA transfer); the report gives both.
- Resources: FPGA segments are separate IPs on one fabric, so their resources add.
- Energy: FPGA segment energy (its own model, which already counts the PS-PL I/O of its input and
  output), CPU active energy, and the DRAM traffic of the seams between a CPU and an FPGA segment.

A transfer of ``n`` values costs (AMD PG021 AXI DMA v7.1 product guide, "Performance": MM2S
first-data latency 10 + 28 + 6 = 44 clocks from the tail-descriptor write, S2MM 10 + 39 = 49
clocks; 99.8% of the stream's theoretical throughput on MM2S for 10,000 bytes):

    cycles = DMA_MM2S_SETUP_CYCLES or DMA_S2MM_SETUP_CYCLES + ceil(n * word_bytes / stream_bytes)

at the PL clock, with one value per stream word (the bundle's AXI-stream wrapper; edgec/backends/
bundle.py) and a stream no wider than the target's PS-PL port (``power.pspl_bus_bits``). Energy is
the DRAM traffic: ``n * word_bits * power.pspl_energy_pj_per_bit`` (targets/*.yaml, Horowitz 2014).
Not included: the driver's software time to start a DMA transfer (Linux/PYNQ, tens of
microseconds per call on a Cortex-A9), which depends on the driver rather than the design.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DMA_MM2S_SETUP_CYCLES = 44  # PG021 "Performance", MM2S: tail descriptor write -> first stream data (10 + 28 + 6 clocks)
DMA_S2MM_SETUP_CYCLES = 49  # PG021 "Performance", S2MM: tail descriptor write -> first memory write (10 + 39 clocks)
DEFAULT_WORD_BITS = 32  # one value per 32-bit stream word unless the segment's types say narrower


@dataclass(frozen=True)
class TransferCost:
    """One DMA transfer between the PS (DRAM) and an FPGA segment."""

    direction: str  # "to_fpga" | "to_cpu"
    values: int
    word_bits: int
    bytes: int
    cycles: int
    latency_us: float
    energy_uj: float

    def as_dict(self) -> dict:
        return {
            "direction": self.direction,
            "values": self.values,
            "word_bits": self.word_bits,
            "bytes": self.bytes,
            "cycles": self.cycles,
            "latency_us": round(self.latency_us, 6),
            "energy_uj": round(self.energy_uj, 9),
        }


def transfer_cost(values: int, direction: str, clock_ns: float, power: dict, word_bits: int = DEFAULT_WORD_BITS) -> TransferCost:
    """The cost of moving ``values`` values over an AXI DMA between DRAM and the PL (see module docstring)."""
    bus_bits = int(power.get("pspl_bus_bits", 64))
    stream_bits = min(max(word_bits, 8), bus_bits)
    total_bytes = values * word_bits // 8
    setup = DMA_MM2S_SETUP_CYCLES if direction == "to_fpga" else DMA_S2MM_SETUP_CYCLES
    beats = math.ceil(values * word_bits / stream_bits)
    cycles = setup + beats
    energy_pj = values * word_bits * float(power.get("pspl_energy_pj_per_bit", 0.0))
    return TransferCost(direction, values, word_bits, total_bytes, cycles, cycles * clock_ns / 1000.0, energy_pj / 1e6)


def system_totals(stages: list[dict], fpga_resources: dict[str, int], available: dict[str, int]) -> dict:
    """Totals of a chain of stages. Each stage: ``{"kind": "fpga"|"cpu"|"transfer", "name",
    "latency_us", "interval_us", "energy_uj"}`` (interval: the stage's initiation interval; a CPU
    stage's is its latency)."""
    latency = sum(s["latency_us"] for s in stages)
    energy = sum(s["energy_uj"] for s in stages)
    slowest = max(stages, key=lambda s: s["interval_us"]) if stages else None
    interval = slowest["interval_us"] if slowest else 0.0
    by_kind = {kind: round(sum(s["latency_us"] for s in stages if s["kind"] == kind), 6) for kind in ("fpga", "cpu", "transfer")}
    energy_by_kind = {kind: round(sum(s["energy_uj"] for s in stages if s["kind"] == kind), 9) for kind in ("fpga", "cpu", "transfer")}
    utilization = {k: round(fpga_resources.get(k, 0) / available[k], 4) if available.get(k) else 0.0 for k in fpga_resources}
    return {
        "latency_us": round(latency, 6),
        "latency_by_placement_us": by_kind,
        "pipelined_interval_us": round(interval, 6),
        "throughput_fps": round(1e6 / interval, 3) if interval > 0 else None,
        "sequential_throughput_fps": round(1e6 / latency, 3) if latency > 0 else None,
        "energy_uj": round(energy, 9),
        "energy_by_placement_uj": energy_by_kind,
        "edp": round(energy * latency, 12),
        "resources": fpga_resources,
        "available": available,
        "utilization": utilization,
        "slowest_stage": slowest["name"] if slowest else None,
        "units": {"latency": "us", "energy": "uJ", "edp": "uJ*us", "throughput": "inferences/s"},
    }
