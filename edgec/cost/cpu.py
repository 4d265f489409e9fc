"""CPU cost model: latency and energy of a partition that runs on the board's CPU (untuned TVM code).

Roofline per layer, one core (TVM's default Relax pipeline compiles every operator to unscheduled
loops on one thread; docs/cpu-backend.md):

    compute_cycles = MACs / (SIMD peak MACs/cycle x efficiency)
                     (DENSE_EFFICIENCY; SHORT_REDUCTION_EFFICIENCY for <= 32 products per output)
    memory_cycles  = DRAM bytes / (DRAM bandwidth x MEMORY_EFFICIENCY) x clock
                     (DRAM bytes = weights + activations when they exceed the L2, else 0)
    cycles         = max(compute_cycles, memory_cycles) + DISPATCH_CYCLES
    latency_us     = cycles / clock_MHz,  energy_uj = active_power_w x latency_us

Element-wise, pooling and softmax-class layers cost ``elements / (SIMD peak x their efficiency)``.
Sparse layers (CSR matrix-vector product) are scalar: ``nnz x cycles_per_nnz + rows x
SPARSE_CYCLES_PER_ROW``, with the CSR arrays' traffic as the memory term.

The board data (SIMD peak, bandwidth, L2, clock, power) comes from ``targets/<board>.yaml`` (``cpu:``,
each value cited there). The efficiencies below describe TVM's untuned code, not the board: they
were measured on the x86-64 build host (targets/x86-64.yaml) and are ASSUMED to carry over to the
ARM cores, whose NEON code LLVM vectorizes the same way; docs/cpu-backend.md lists the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.fold_constants import FoldConstants
from qonnx.transformation.infer_shapes import InferShapes

from edgec.errors import OptionError
from edgec.targets import CpuSpec

# Measured on the build host (AMD EPYC Zen 4 VM, 2.6 GHz, LLVM generic x86-64 = SSE2, peak 8 fp32
# MAC/cycle), TVM 0.27 untuned, batch 1, median of 7-15 runs of TVM's time_evaluator (C++ timer);
# every case is listed in docs/cpu-backend.md ("Calibration").
# Dense/Conv layers with a long reduction (> 32 products per output) whose weights and activations
# fit in L2: achieved/peak MACs per cycle over 12 cases (MatMul and Gemm(transB) 256x256, 784x256,
# 512x128; Conv2d with reductions 36-576) 0.016-0.125, median 0.061.
DENSE_EFFICIENCY = 0.061
# Short reductions (C_in x kernel area <= 27: 1-3 input channels, 3x3 or 5x5) are unrolled by LLVM and
# vectorized over output columns: 0.42-0.61 of the peak over 4 cases, median 0.48. The next measured
# reduction, 36 (4 channels x 3x3), is back at 0.125; the threshold is put at 32.
SHORT_REDUCTION_EFFICIENCY = 0.48
SHORT_REDUCTION_MAX = 32
# Dense layers whose weights exceed L2 (MatMul and Gemm(transB) with 4, 8 and 64 MB of weights): the
# unscheduled reduction loops stride through the weights and are latency-bound at 0.26-1.13 GB/s
# (median 0.53 GB/s) against the 24 GB/s one core streams on that host: 0.53/24 = 0.022.
MEMORY_EFFICIENCY = 0.022
# Element-wise (Relu on 64k and 1M elements, Add on 1M): 0.27-0.29 cycles/element = 0.43-0.47 of the
# fp32 peak (elements per cycle / peak MACs per cycle), median 0.45.
ELEMENTWISE_EFFICIENCY = 0.45
# MaxPool 2x2/2 on 64k and 1M input elements: 0.18-0.23 cycles per window element = 0.54-0.71: 0.6.
POOL_EFFICIENCY = 0.6
# Softmax, Sigmoid, Tanh on 64k elements: 5.9-11.9 cycles/element = 0.011-0.021 of the peak, median
# 0.013; used for every transcendental op.
TRANSCENDENTAL_EFFICIENCY = 0.013
# Relax VM: a model of 1 tiny kernel runs in 0.51 us, one of 8 in 1.96 us: 0.21 us (540 cycles at
# 2.6 GHz) per kernel and 0.30 us (790 cycles) per call.
DISPATCH_CYCLES = 540
CALL_CYCLES = 790
# Scalar CSR SpMV (scipy.sparse csr_matvec, float32) on the same host, 8 matrices from 64x4096 to
# 4096x256, 5-50% dense, 6.5k-210k non-zeros: 1.8-2.9 cycles per non-zero, least-squares fit 2.0.
SPARSE_CYCLES_PER_NNZ = 2.0
# The per-row term was below the fit's noise (< 8 cycles); 4 cycles ASSUMED (two row-pointer loads,
# one store, one loop branch).
SPARSE_CYCLES_PER_ROW = 4.0
# A QONNX Quant becomes 7 element-wise ops (Div, Add, Min, Max, Round, Sub, Mul) that TVM fuses into
# one kernel; a BipolarQuant 3 (Less, Where, Mul). edgec.backends.tvm.prepare_for_tvm.
QUANT_ELEMENTWISE_OPS = 7
BIPOLAR_ELEMENTWISE_OPS = 3

DENSE_OPS = ("Conv", "MatMul", "Gemm", "ConvTranspose")
POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum")
TRANSCENDENTAL_OPS = (
    "Softmax",
    "LogSoftmax",
    "Exp",
    "Log",
    "Sigmoid",
    "Tanh",
    "Erf",
    "Gelu",
    "HardSigmoid",
    "Softplus",
    "Pow",
    "Sqrt",
    "Reciprocal",
)
# Reshape-like ops are views or folded by TVM (RewriteDataflowReshape, FoldConstant): no kernel.
FREE_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Constant", "Shape", "Dropout")
QUANT_OPS = ("Quant", "IntQuant")
BIPOLAR_OPS = ("BipolarQuant",)
FLOAT_BYTES = 4


@dataclass(frozen=True)
class CpuCost:
    """Cost of one layer (or a whole partition) on one CPU core."""

    cycles: float
    latency_us: float
    energy_uj: float
    bound: str  # "compute" or "memory"
    compute_cycles: float = 0.0
    memory_cycles: float = 0.0


def _finish(compute: float, memory: float, overhead: float, cpu: CpuSpec) -> CpuCost:
    cycles = max(compute, memory) + overhead
    latency_us = cycles / cpu.clock_mhz
    return CpuCost(
        cycles=cycles,
        latency_us=latency_us,
        energy_uj=cpu.active_power_w * latency_us,
        bound="memory" if memory > compute else "compute",
        compute_cycles=compute,
        memory_cycles=memory,
    )


def _dram_cycles(dram_bytes: float, cpu: CpuSpec, efficiency: float) -> float:
    if dram_bytes <= 0 or cpu.dram_bandwidth_gbs <= 0:
        return 0.0
    return dram_bytes / (cpu.dram_bandwidth_gbs * 1e9 * efficiency) * cpu.clock_mhz * 1e6


def _spills_l2(working_set_bytes: float, cpu: CpuSpec) -> bool:
    return working_set_bytes > cpu.l2_kb * 1024


def _peak(cpu: CpuSpec, dtype: str) -> float:
    if dtype not in ("fp32", "int8"):
        raise OptionError(f"CPU cost model: unknown dtype '{dtype}'", hint="use fp32 or int8")
    peak = cpu.fp32_macs_per_cycle if dtype == "fp32" else cpu.int8_macs_per_cycle
    if peak <= 0:
        raise OptionError(f"CPU '{cpu.name}' has no {dtype}_macs_per_cycle", hint="add it to the target's cpu: section")
    return peak


def cpu_dense_cost(
    macs: int, weight_bytes: int, activation_bytes: int, cpu: CpuSpec, dtype: str = "fp32", reduction: int | None = None
) -> CpuCost:
    """Roofline cost of a dense layer (Conv/MatMul/Gemm) on one core of ``cpu``.

    ``compute = macs / (peak x efficiency)`` with DENSE_EFFICIENCY, or SHORT_REDUCTION_EFFICIENCY when
    ``reduction`` (products summed per output: C_in/group x kernel area, or K) is at most
    SHORT_REDUCTION_MAX. When weights plus activations exceed the L2, all of them come from DRAM:
    ``memory = bytes / (bandwidth x MEMORY_EFFICIENCY) x clock``; otherwise the weights stay cached
    between inferences and memory is free. ``cycles = max(compute, memory) + DISPATCH_CYCLES``;
    energy = active power x latency.
    """
    short = reduction is not None and reduction <= SHORT_REDUCTION_MAX
    compute = macs / (_peak(cpu, dtype) * (SHORT_REDUCTION_EFFICIENCY if short else DENSE_EFFICIENCY))
    working_set = weight_bytes + activation_bytes
    memory = _dram_cycles(working_set, cpu, MEMORY_EFFICIENCY) if _spills_l2(working_set, cpu) else 0.0
    return _finish(compute, memory, DISPATCH_CYCLES, cpu)


def cpu_sparse_cost(nonzeros: int, rows: int, activation_bytes: int, cpu: CpuSpec, index_bytes: int = 4, value_bytes: int = 4) -> CpuCost:
    """Cost of a CSR sparse matrix-vector product (scalar gather per non-zero) on one core.

    ``compute = nonzeros x cycles_per_nnz + rows x SPARSE_CYCLES_PER_ROW`` (``cycles_per_nnz`` is the
    board's ``sparse_cycles_per_nnz`` when given, else the host-measured SPARSE_CYCLES_PER_NNZ).
    Memory traffic = values + column indices + row pointers + activations; it is streamed (no
    strided reduction loop), so when it exceeds the L2 it moves at the board's full DRAM bandwidth.
    """
    per_nnz = cpu.sparse_cycles_per_nnz if cpu.sparse_cycles_per_nnz else SPARSE_CYCLES_PER_NNZ
    compute = nonzeros * per_nnz + rows * SPARSE_CYCLES_PER_ROW
    traffic = nonzeros * (value_bytes + index_bytes) + (rows + 1) * index_bytes + activation_bytes
    memory = _dram_cycles(traffic, cpu, 1.0) if _spills_l2(traffic, cpu) else 0.0
    return _finish(compute, memory, DISPATCH_CYCLES, cpu)


def cpu_elementwise_cost(elements: int, cpu: CpuSpec, efficiency: float = ELEMENTWISE_EFFICIENCY, passes: int = 1) -> CpuCost:
    """Cost of ``passes`` fused element-wise operations over ``elements`` values on one core.

    ``compute = passes x elements / (fp32 peak x efficiency)``; pooling and transcendental layers pass
    POOL_EFFICIENCY / TRANSCENDENTAL_EFFICIENCY. Their activations are far smaller than the L2 in
    the models edgec partitions, so memory is not charged separately.
    """
    compute = passes * elements / (_peak(cpu, "fp32") * efficiency)
    return _finish(compute, 0.0, DISPATCH_CYCLES, cpu)


def _constant_tensors(model: ModelWrapper) -> set[str]:
    """Initializers, Shape outputs (partitions have static shapes) and everything computed from them
    only: TVM folds all of these at compile time."""
    constant = {i.name for i in model.graph.initializer}
    for node in model.graph.node:
        inputs = [i for i in node.input if i]
        if node.op_type in ("Constant", "Shape") or (inputs and all(i in constant for i in inputs)):
            constant.update(o for o in node.output if o)
    return constant


def _shapes(model: ModelWrapper) -> dict[str, list[int]]:
    """Static shapes of every tensor, inferred on a copy whose QONNX quantizers are Identity ops.

    ONNX shape inference cannot see through custom-domain ops (e.g. the old ``onnx.brevitas``
    Quant), and shapes computed at run time (``Shape -> Gather -> Concat -> Reshape``, as PyTorch
    exports ``flatten``) need their constants: quantizers keep their input's shape, so an Identity
    stands in for them; ``Shape`` nodes of statically shaped tensors become initializers and qonnx
    ``FoldConstants`` folds what follows, until every shape is known.
    """
    proto = onnx.ModelProto()
    proto.CopyFrom(model.model)
    for node in proto.graph.node:
        if node.op_type in QUANT_OPS + BIPOLAR_OPS:
            del node.input[1:]
            del node.attribute[:]
            node.op_type, node.domain = "Identity", ""
    del proto.graph.value_info[:]
    work = ModelWrapper(proto)
    wanted = [o for n in model.graph.node for o in n.output if o]
    for _ in range(4):
        work = work.transform(InferShapes())
        if all(_known_shape(work, o) for o in wanted if o in _tensor_names(work)):
            break
        shape_nodes = [n for n in work.graph.node if n.op_type == "Shape" and work.get_tensor_shape(n.input[0])]
        for node in shape_nodes:
            work.set_initializer(node.output[0], np.asarray(work.get_tensor_shape(node.input[0]), dtype=np.int64))
            work.graph.node.remove(node)
        work = work.transform(FoldConstants())
    return {name: list(work.get_tensor_shape(name)) for name in _tensor_names(work) if _known_shape(work, name)}


def _known_shape(model: ModelWrapper, name: str) -> bool:
    """A static shape; ``[]`` counts only for initializers (shape inference leaves ``[]`` when it fails)."""
    shape = model.get_tensor_shape(name)
    if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
        return False
    return bool(shape) or model.get_initializer(name) is not None


def _tensor_names(model: ModelWrapper) -> set[str]:
    graph = model.graph
    names = {o for n in graph.node for o in n.output if o} | {i.name for i in graph.initializer}
    return names | {v.name for v in graph.input} | {v.name for v in graph.output}


def _elements(shapes: dict[str, list[int]], tensor: str) -> int:
    shape = shapes.get(tensor) if tensor else None
    return int(np.prod(shape)) if shape is not None else 0


def _dense_macs(shapes: dict[str, list[int]], node) -> tuple[int, int]:
    """(MACs, reduction length = products summed per output value) of a Conv/MatMul/Gemm node."""
    out_elems = _elements(shapes, node.output[0])
    weight_shape = shapes.get(node.input[1]) or []
    if node.op_type in ("Conv", "ConvTranspose"):
        # per output value: (C_in / group) x kernel area = weight elements / C_out
        per_output = int(np.prod(weight_shape[1:])) if len(weight_shape) > 1 else 0
        if node.op_type == "ConvTranspose":  # every input value meets every (C_out / group) x kernel weight
            return _elements(shapes, node.input[0]) * per_output, per_output
        return out_elems * per_output, per_output
    a_shape = shapes.get(node.input[0]) or []
    trans_a = node.op_type == "Gemm" and next((a.i for a in node.attribute if a.name == "transA"), 0)
    k = int(a_shape[0] if trans_a else a_shape[-1]) if a_shape else 0
    return out_elems * k, k


def cpu_node_costs(model: ModelWrapper, cpu: CpuSpec) -> list[dict]:
    """One cost entry per ONNX node of a CPU partition (shapes are inferred here; the input's must be static).

    Entries: ``name, op, macs`` (Conv/MatMul/Gemm), ``elements`` (other ops: output elements; pooling:
    output elements x window), ``bytes`` (weights + input and output activations, float32),
    ``cycles, latency_us, energy_uj, bound``. Nodes computed from constants only (weight quantizers,
    weight transposes) and reshape-like views cost nothing: they are folded or free in TVM.
    """
    constant = _constant_tensors(model)
    shapes = _shapes(model)
    entries = []
    for node in model.graph.node:
        name = node.name or node.output[0]
        out_elems = _elements(shapes, node.output[0])
        act_bytes = FLOAT_BYTES * (sum(_elements(shapes, i) for i in node.input if i and i not in constant) + out_elems)
        weight_bytes = FLOAT_BYTES * sum(_elements(shapes, i) for i in node.input if i and i in constant)
        entry = {"name": name, "op": node.op_type, "macs": 0, "elements": 0, "bytes": weight_bytes + act_bytes}
        if node.output[0] in constant or node.op_type in FREE_OPS:
            cost = CpuCost(cycles=0.0, latency_us=0.0, energy_uj=0.0, bound="compute")
        elif node.op_type in DENSE_OPS and len(node.input) > 1:
            entry["macs"], reduction = _dense_macs(shapes, node)
            cost = cpu_dense_cost(entry["macs"], weight_bytes, act_bytes, cpu, reduction=reduction)
        elif node.op_type in POOL_OPS:
            kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
            entry["elements"] = out_elems * int(np.prod(kernel)) if kernel else _elements(shapes, node.input[0])
            cost = cpu_elementwise_cost(entry["elements"], cpu, POOL_EFFICIENCY)
        elif node.op_type in TRANSCENDENTAL_OPS:
            entry["elements"] = out_elems
            cost = cpu_elementwise_cost(out_elems, cpu, TRANSCENDENTAL_EFFICIENCY)
        else:
            passes = QUANT_ELEMENTWISE_OPS if node.op_type in QUANT_OPS else BIPOLAR_ELEMENTWISE_OPS if node.op_type in BIPOLAR_OPS else 1
            entry["elements"] = out_elems
            cost = cpu_elementwise_cost(out_elems, cpu, ELEMENTWISE_EFFICIENCY, passes)
        entry.update(cycles=cost.cycles, latency_us=cost.latency_us, energy_uj=cost.energy_uj, bound=cost.bound)
        entries.append(entry)
    return entries


def cpu_partition_cost(model: ModelWrapper, cpu: CpuSpec) -> CpuCost:
    """Whole-partition cost: the sum of :func:`cpu_node_costs` plus one VM call (CALL_CYCLES)."""
    entries = cpu_node_costs(model, cpu)
    cycles = sum(e["cycles"] for e in entries) + CALL_CYCLES
    memory_cycles = sum(e["cycles"] for e in entries if e["bound"] == "memory")
    latency_us = cycles / cpu.clock_mhz
    return CpuCost(
        cycles=cycles,
        latency_us=latency_us,
        energy_uj=cpu.active_power_w * latency_us,
        bound="memory" if memory_cycles > cycles / 2 else "compute",
        compute_cycles=cycles - memory_cycles,
        memory_cycles=memory_cycles,
    )
