"""Keep the layers that run on the CPU in float32 after post-training quantization.

The CPU partition is compiled by TVM in float32 (edgec.backends.tvm): a QONNX quantizer there is
emulated with seven element-wise float operations per value (Div, Add, Clip, Round, Sub, Mul),
which costs time and saves nothing. The FPGA is where narrow fixed-point arithmetic pays. So,
on a model that edgec quantized itself and that has been placed (``PlaceNodes`` and the
partitioner's moves), this pass:

* removes every activation quantizer placed on the CPU whose readers all run on the CPU (or that
  writes the graph output), wiring its input straight to its readers; one whose values reach an
  FPGA node through reshapes on the CPU stays (the FPGA layer needs them quantized);
* moves to the FPGA an activation quantizer placed on the CPU that feeds an FPGA node: it becomes
  the FPGA segment's input quantizer (hls4ml merges it into the input type), so the FPGA layers
  keep exactly the quantized arithmetic they had; a ReLU on the CPU right before an unsigned
  quantizer is dropped (the quantizer clips negative values to 0 itself);
* removes every weight quantizer whose readers all run on the CPU (they read the float weights).

What the FPGA computes is unchanged; the CPU layers compute what the float model computes.
Quantizers a user's model came with are not this pass's to remove: run it only on quantizers
edgec's own PTQ inserted (the flow runs it when the float model had none).
"""

from __future__ import annotations

import numpy as np
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

from edgec.fixed_point import LAYOUT_OPS
from edgec.passes.graph_utils import bypass
from edgec.passes.partition import PLACEMENT_KEY, REASON_KEY, _set_meta, constant_nodes, pin, placement_of
from edgec.passes.quant.fixed import QUANTIZER_OPS


class KeepCpuLayersFloat(Transformation):
    """Remove the quantizers the CPU would only emulate (see module docstring); ``record`` says
    which were removed and which were moved to the FPGA."""

    def __init__(self, placement: dict[str, str] | None = None) -> None:
        """``placement`` (node name -> ``fpga``/``cpu``) is where the partitioner finally put each
        node (its segments: a node between two cut points goes where its atom goes); it is written
        onto the nodes first. Without it, the nodes' own ``PlaceNodes`` placement is used."""
        super().__init__()
        self.placement = dict(placement or {})
        self.record: dict[str, list[str]] = {"removed": [], "moved_to_fpga": []}

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        outputs = {o.name for o in model.graph.output}
        constant = constant_nodes(model)
        for node in model.graph.node:
            if node.name in self.placement and node.name not in constant and placement_of(node) != self.placement[node.name]:
                _set_meta(node, PLACEMENT_KEY, self.placement[node.name])
                _set_meta(node, REASON_KEY, f"placed with its segment ({self.placement[node.name]})")
        for node in list(model.graph.node):
            if node.op_type not in QUANTIZER_OPS:
                continue
            readers = model.find_consumers(node.output[0]) or []
            if node.name in constant:
                users = _compute_readers(model, node, constant)
                if users and all(placement_of(r) == "cpu" for r in users) and node.output[0] not in outputs and bypass(model, node):
                    self.record["removed"].append(node.name)
                continue
            if placement_of(node) != "cpu":
                continue
            through_layout = _compute_readers(model, node, set(), look_through=LAYOUT_OPS)
            if all(placement_of(r) == "cpu" for r in through_layout) and (readers or node.output[0] in outputs):
                if bypass(model, node):
                    self.record["removed"].append(node.name)
            elif all(placement_of(r) == "fpga" for r in through_layout):
                # the quantizer, and the reshapes between it and the FPGA, join the FPGA segment
                tail = _layout_tail(model, node)
                if tail is not None:
                    relu = _redundant_relu(model, node)
                    if relu is not None and bypass(model, relu):
                        self.record["removed"].append(relu.name)
                    for moved in [node, *tail]:
                        _set_meta(moved, PLACEMENT_KEY, "fpga")
                        pin(moved)
                        _set_meta(
                            moved,
                            REASON_KEY,
                            "the quantizer of an FPGA segment's input (kept on the FPGA: the CPU would only emulate it)"
                            if moved is node
                            else "a reshape between the FPGA segment's input quantizer and the FPGA",
                        )
                        self.record["moved_to_fpga"].append(moved.name)
        return model, False


def _layout_tail(model: ModelWrapper, node) -> list | None:
    """The reshape-like CPU nodes between ``node`` and the FPGA nodes it feeds, when they only feed
    each other and the FPGA (so they can move to the FPGA with ``node``); None otherwise."""
    outputs = {o.name for o in model.graph.output}
    tail, frontier = [], [node]
    while frontier:
        current = frontier.pop()
        if current.output[0] in outputs:
            return None
        for reader in model.find_consumers(current.output[0]) or []:
            if placement_of(reader) == "fpga":
                continue
            if reader.op_type not in LAYOUT_OPS or len([i for i in reader.input if i and model.get_initializer(i) is None]) != 1:
                return None
            if reader not in tail:
                tail.append(reader)
                frontier.append(reader)
    return tail


def _compute_readers(model: ModelWrapper, node, constant: set[str], look_through: tuple[str, ...] = ()) -> list:
    """The nodes that compute with ``node``'s output, looking through constant nodes (a weight
    quantizer feeding a Transpose of the weights feeding a MatMul: the MatMul) and through the ops
    in ``look_through`` (an activation quantizer, a Flatten on the CPU, then an FPGA Dense: the
    Dense still needs the quantized values)."""
    found, frontier, seen = [], [node], set()
    while frontier:
        current = frontier.pop()
        for reader in model.find_consumers(current.output[0]) or []:
            if reader.name in seen:
                continue
            seen.add(reader.name)
            if reader.name in constant or reader.op_type in look_through:
                frontier.append(reader)
            else:
                found.append(reader)
    return found


def _redundant_relu(model: ModelWrapper, quant):
    """A CPU ReLU that only feeds ``quant``, an unsigned zero-point-0 quantizer: the quantizer clips
    negative values to 0 itself (round(x/s) <= 0 saturates to 0), so the ReLU changes nothing, and
    left on the CPU it would keep the FPGA from starting at the quantizer."""
    if quant.op_type != "Quant":
        return None
    producer = model.find_producer(quant.input[0])
    if producer is None or producer.op_type != "Relu" or placement_of(producer) != "cpu":
        return None
    if len(model.find_consumers(producer.output[0]) or []) != 1 or producer.output[0] in {o.name for o in model.graph.output}:
        return None
    signed = next((a.i for a in quant.attribute if a.name == "signed"), 1)
    zeropt = model.get_initializer(quant.input[2])
    if signed or zeropt is None or np.any(np.asarray(zeropt) != 0):
        return None
    return producer
