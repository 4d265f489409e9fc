"""Placement of every node on the FPGA or the board's CPU, and the split into a chain of segments.

``PlaceNodes`` (a qonnx ``Transformation``) records on each node (``metadata_props``
``edgec.placement`` and ``edgec.placement_reason``) where it runs and why:

- ``place="fpga"``: everything on the FPGA; an op hls4ml cannot implement is an error (as before
  partitioning existed);
- ``place="cpu"``: everything on the CPU (TVM);
- ``place="auto"``: ops hls4ml cannot implement (``edgec.frontend.support``) go to the CPU, the
  rest to the FPGA; the build then moves layers that do not fit the FPGA budget (see
  ``move_largest_to_cpu``);
- ``overrides`` (node name -> fpga|cpu) win over all of these, except that an op hls4ml cannot
  implement cannot be forced onto the FPGA.

``split_segments`` cuts the graph into segments that each have one input and one output tensor:
a cut is only possible where exactly one (non-constant) tensor crosses it, so nodes between two
such points (an "atom": e.g. a residual block) are placed together, on the CPU if any of them must
be. Consecutive atoms with the same placement form one segment, so partitions stay contiguous.
Constant nodes (weight quantizers) travel with the nodes that read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation
from qonnx.transformation.fold_constants import FoldConstants
from qonnx.transformation.general import RemoveUnusedTensors
from qonnx.transformation.infer_shapes import InferShapes

from edgec.errors import OptionError, UnsupportedOpsError
from edgec.frontend.support import unsupported_nodes
from edgec.passes.clip_after_quant import MoveClipAfterQuantizer
from edgec.passes.rewrite_for_hls4ml import RewriteForHls4ml

PLACEMENTS = ("fpga", "cpu")
PLACE_MODES = ("auto", "fpga", "cpu")
PLACEMENT_KEY = "edgec.placement"
REASON_KEY = "edgec.placement_reason"
PINNED_KEY = "edgec.placement_pinned"
LINEAR_OPS = {"MatMul", "Gemm", "Conv", "ConvTranspose"}


def _meta(node, key: str) -> str | None:
    for prop in node.metadata_props:
        if prop.key == key:
            return prop.value
    return None


def _set_meta(node, key: str, value: str) -> None:
    for prop in node.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = node.metadata_props.add()
    entry.key, entry.value = key, value


def placement_of(node) -> str:
    """Where a node placed by ``PlaceNodes`` runs (``fpga`` if it was never placed)."""
    return _meta(node, PLACEMENT_KEY) or "fpga"


def reason_of(node) -> str:
    return _meta(node, REASON_KEY) or ""


def pin(node) -> None:
    """Keep a node where it is placed now: the partitioner's own moves (wiring absorbed into a CPU
    neighbour, a CPU layer taking the FPGA nodes up to its quantizer) leave it there."""
    _set_meta(node, PINNED_KEY, "1")


def is_pinned(node) -> bool:
    """Whether the user placed the node, or a pass pinned it (``pin``)."""
    return reason_of(node) == "placed by the user" or _meta(node, PINNED_KEY) == "1"


def name_nodes(model: ModelWrapper) -> ModelWrapper:
    """A copy of ``model`` in which every node has a unique name (``<op>_<index>`` for unnamed ones),
    so placements and reports can name them."""
    model = ModelWrapper(model.model.__deepcopy__())
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        name = node.name or f"{node.op_type}_{index}"
        while name in seen:
            name = f"{name}_{index}"
        node.name = name
        seen.add(name)
    return model


def prepare(model: ModelWrapper) -> ModelWrapper:
    """Named copy of a loaded model with constants folded, the rewrites edgec makes for hls4ml applied
    and shapes inferred, ready to place. The
    user's node names are kept (qonnx's cleanup would rename every node), so placements can be
    overridden and reported by them; quantizers are not folded (canonicalization reads them)."""
    model = name_nodes(model).transform(InferShapes())
    model = model.transform(FoldConstants(exclude_op_types=["Quant", "BipolarQuant", "Trunc"]))
    # ops edgec rewrites into ops hls4ml lowers (AveragePool -> depthwise Conv, PRelu...) are not "unsupported"
    model = name_nodes(model.transform(MoveClipAfterQuantizer()).transform(RewriteForHls4ml())).transform(InferShapes())
    model = model.transform(RemoveUnusedTensors()).transform(InferShapes())
    return name_nodes(model)


def constant_nodes(model: ModelWrapper) -> set[str]:
    """Nodes whose every input is an initializer or another constant node's output (weight quantizers)."""
    constant_tensors = {init.name for init in model.graph.initializer}
    constant: set[str] = set()
    for node in model.graph.node:
        if all(not name or name in constant_tensors for name in node.input):
            constant.add(node.name)
            constant_tensors.update(node.output)
    return constant


class PlaceNodes(Transformation):
    """Record on every node whether it runs on the FPGA or the CPU, and why (see module docstring)."""

    def __init__(
        self,
        place: str = "auto",
        overrides: dict[str, str] | None = None,
        has_fpga: bool = True,
        has_cpu: bool = True,
        target_name: str = "",
    ) -> None:
        super().__init__()
        if place not in PLACE_MODES:
            raise OptionError(f"--place {place!r} is not one of {', '.join(PLACE_MODES)}")
        if place == "fpga" and not has_fpga:
            raise OptionError(f"--place fpga, but {target_name} has no FPGA", hint="use --place auto or cpu, or an FPGA board")
        if place == "cpu" and not has_cpu:
            raise OptionError(f"--place cpu, but {target_name} has no CPU edgec can compile for", hint="use --place fpga")
        self.place = place if has_fpga else "cpu"
        self.overrides = dict(overrides or {})
        self.has_fpga = has_fpga
        self.has_cpu = has_cpu
        self.target_name = target_name
        for name, where in self.overrides.items():
            if where not in PLACEMENTS:
                raise OptionError(f"placement override for '{name}' is {where!r}; use 'fpga' or 'cpu'")
            if where == "fpga" and not has_fpga:
                raise OptionError(f"placement override puts '{name}' on the FPGA, but {target_name} has no FPGA")
            if where == "cpu" and not has_cpu:
                raise OptionError(f"placement override puts '{name}' on the CPU, but {target_name} has no CPU edgec can compile for")

    def apply(self, model: ModelWrapper) -> tuple[ModelWrapper, bool]:
        names = {node.name for node in model.graph.node}
        unknown = sorted(set(self.overrides) - names)
        if unknown:
            raise OptionError(
                f"placement overrides name unknown node(s): {', '.join(unknown)}",
                hint=f"node names in this model: {', '.join(sorted(names)[:12])}{' ...' if len(names) > 12 else ''}",
            )
        blocked = {name: f"{op}: {why}" for name, op, why in unsupported_nodes(model, after_canonicalization=False)}
        constant = constant_nodes(model)
        if self.place == "fpga" or not self.has_cpu:
            forced = {n: why for n, why in blocked.items() if n not in constant and self.overrides.get(n) != "cpu"}
            if forced:
                listing = "; ".join(f"{n} ({why})" for n, why in forced.items())
                raise UnsupportedOpsError(
                    f"{len(forced)} node(s) cannot be lowered to the FPGA: {listing}",
                    hint=(
                        "use --place auto to run them on the board's CPU, or replace these ops before export"
                        if self.has_cpu
                        else f"{self.target_name} has no CPU to run them on: replace these ops before export, or pick a Zynq board"
                    ),
                )
        for node in model.graph.node:
            if node.name in constant:
                where, why = "fpga", "constant (folded into the layer that reads it)"
            elif node.name in self.overrides:
                where, why = self.overrides[node.name], "placed by the user"
                if where == "fpga" and node.name in blocked:
                    raise UnsupportedOpsError(
                        f"node {node.name} was placed on the FPGA by the user, but {blocked[node.name]}",
                        hint="place it on the CPU, or leave its placement to edgec",
                    )
            elif not self.has_fpga:
                where, why = "cpu", f"{self.target_name or 'the target'} has no FPGA"
            elif self.place == "cpu":
                where, why = "cpu", "--place cpu"
            elif node.name in blocked:
                where, why = "cpu", f"hls4ml cannot implement it ({blocked[node.name]})"
            else:
                where, why = "fpga", "hls4ml implements it" if self.place == "auto" else "--place fpga"
            _set_meta(node, PLACEMENT_KEY, where)
            _set_meta(node, REASON_KEY, why)
        return model, False


@dataclass
class Atom:
    """Nodes between two single-tensor cut points: they can only be placed together."""

    nodes: list[str]
    input_tensor: str
    output_tensor: str
    placement: str = "fpga"
    reasons: list[str] = field(default_factory=list)


@dataclass
class Segment:
    """A run of atoms with one placement, extracted as a one-input, one-output model."""

    index: int
    placement: str
    model: ModelWrapper
    nodes: list[str]
    input_tensor: str
    output_tensor: str
    reasons: dict[str, str] = field(default_factory=dict)  # node -> why it is where it is

    @property
    def name(self) -> str:
        return f"seg{self.index}_{self.placement}"


def atoms(model: ModelWrapper) -> list[Atom]:
    """Split the (topologically sorted) non-constant nodes at every point one tensor crosses."""
    constant = constant_nodes(model)
    nodes = [n for n in model.graph.node if n.name not in constant]
    constant_tensors = {i.name for i in model.graph.initializer} | {t for n in model.graph.node if n.name in constant for t in n.output}
    graph_in = model.graph.input[0].name
    graph_outs = {o.name for o in model.graph.output}
    last_use: dict[str, int] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            if name and name not in constant_tensors:
                last_use[name] = index
    produced_at = {graph_in: -1}
    for index, node in enumerate(nodes):
        for name in node.output:
            produced_at[name] = index
    result: list[Atom] = []
    start, current_in = 0, graph_in
    for k in range(len(nodes)):
        live = [t for t, at in produced_at.items() if at <= k and (last_use.get(t, -2) > k or (t in graph_outs and k < len(nodes) - 1))]
        if k == len(nodes) - 1 or len(live) == 1:
            out = live[0] if live else nodes[k].output[0]
            if k == len(nodes) - 1:
                out = next(iter(graph_outs))
            members = nodes[start : k + 1]
            placements = [placement_of(n) for n in members]
            where = "cpu" if "cpu" in placements else "fpga"
            reasons = [f"{n.name}: {reason_of(n)}" for n in members if placement_of(n) == where]
            result.append(Atom([n.name for n in members], current_in, out, where, reasons))
            start, current_in = k + 1, out
    return result


def _extract(model: ModelWrapper, node_names: list[str], input_tensor: str, output_tensor: str) -> ModelWrapper:
    """The sub-model of ``node_names`` (plus the constant nodes they read) from one tensor to another."""
    constant = constant_nodes(model)
    by_output = {out: n for n in model.graph.node for out in n.output}
    wanted = set(node_names)
    needed_inputs = [name for n in model.graph.node if n.name in wanted for name in n.input if name]
    stack = list(needed_inputs)
    while stack:  # constant producers of the segment's inputs (and theirs)
        producer = by_output.get(stack.pop())
        if producer is not None and producer.name in constant and producer.name not in wanted:
            wanted.add(producer.name)
            stack.extend(producer.input)
    nodes = [n.__deepcopy__() if hasattr(n, "__deepcopy__") else n for n in model.graph.node if n.name in wanted]
    used = {name for n in nodes for name in n.input}
    inits = [i for i in model.graph.initializer if i.name in used]
    shape_in = model.get_tensor_shape(input_tensor)
    shape_out = model.get_tensor_shape(output_tensor)
    graph = helper.make_graph(
        nodes,
        "edgec_segment",
        [helper.make_tensor_value_info(input_tensor, 1, shape_in)],
        [helper.make_tensor_value_info(output_tensor, 1, shape_out)],
        initializer=inits,
    )
    proto = helper.make_model(graph, opset_imports=list(model.model.opset_import), ir_version=model.model.ir_version)
    return _tidy(ModelWrapper(proto).transform(InferShapes()))


def _tidy(sub: ModelWrapper) -> ModelWrapper:
    """Drop value infos that repeat the graph's inputs/outputs (shape inference may add them; qonnx
    refuses a model with two value infos for one tensor)."""
    io = {v.name for v in sub.graph.input} | {v.name for v in sub.graph.output}
    seen: set[str] = set()
    for vi in list(sub.graph.value_info):
        if vi.name in io or vi.name in seen:
            sub.graph.value_info.remove(vi)
        seen.add(vi.name)
    return sub


QUANTIZERS = ("Quant", "BipolarQuant")


def _requantize_input(model: ModelWrapper, sub: ModelWrapper) -> ModelWrapper:
    """When the tensor entering an FPGA segment is a quantizer's output (computed on the CPU), repeat
    that quantizer at the segment's start: on values already on its grid it changes nothing, and it
    gives the FPGA side the quantized input its exact lowering needs (edgec.passes.exact_requant)."""
    in_name = sub.graph.input[0].name
    producer = model.find_producer(in_name)
    if producer is None or producer.op_type not in QUANTIZERS:
        return sub
    copy = producer.__deepcopy__()
    copy.name = f"{producer.name}_seam"
    fresh = f"{in_name}_seam"
    copy.input[0] = in_name
    copy.output[0] = fresh
    for node in sub.graph.node:
        for i, name in enumerate(node.input):
            if name == in_name:
                node.input[i] = fresh
    for name in copy.input[1:]:
        value = model.get_initializer(name)
        if value is not None and sub.get_initializer(name) is None:
            sub.set_initializer(name, value)
    sub.graph.node.insert(0, copy)
    _set_meta(copy, PLACEMENT_KEY, "fpga")
    _set_meta(copy, REASON_KEY, "repeats the CPU segment's output quantizer (no-op on its values)")
    return _tidy(sub.transform(InferShapes()))


def split_segments(model: ModelWrapper, atom_list: list[Atom] | None = None) -> list[Segment]:
    """Merge consecutive atoms with the same placement into segments and extract each one."""
    atom_list = atom_list if atom_list is not None else atoms(model)
    groups: list[list[Atom]] = []
    for atom in atom_list:
        if groups and groups[-1][-1].placement == atom.placement:
            groups[-1].append(atom)
        else:
            groups.append([atom])
    by_name = {n.name: n for n in model.graph.node}
    segments = []
    for index, group in enumerate(groups):
        names = [name for atom in group for name in atom.nodes]
        reasons = {name: reason_of(by_name[name]) for name in names}
        if len(groups) == 1:
            sub = model
        else:
            sub = _extract(model, names, group[0].input_tensor, group[-1].output_tensor)
            if group[0].placement == "fpga" and index > 0:
                sub = _requantize_input(model, sub)
        segments.append(Segment(index, group[0].placement, sub, names, group[0].input_tensor, group[-1].output_tensor, reasons))
    return segments


def atom_weights(model: ModelWrapper, atom: Atom) -> int:
    """Weights of the linear layers in an atom (what decides whether it fits the FPGA)."""
    by_name = {n.name: n for n in model.graph.node}
    total = 0
    for name in atom.nodes:
        node = by_name[name]
        if node.op_type in LINEAR_OPS and len(node.input) > 1:
            shape = model.get_tensor_shape(node.input[1])
            total += int(np.prod(shape)) if shape else 0
    return total


def move_largest_to_cpu(
    model: ModelWrapper, atom_list: list[Atom], segment: Segment, why: str, pinned: set[str] | None = None
) -> str | None:
    """Move the FPGA atom of ``segment`` with the most weights to the CPU (the build calls this when
    the segment does not fit the FPGA even at the largest reuse factor). Returns the moved atom's
    description, or None if the segment has no FPGA atom left to move."""
    members = set(segment.nodes)
    pinned = pinned or set()
    candidates = [a for a in atom_list if a.placement == "fpga" and set(a.nodes) <= members and not (set(a.nodes) & pinned)]
    if not candidates:
        return None
    largest = max(candidates, key=lambda a: (atom_weights(model, a), -atom_list.index(a)))
    by_name = {n.name: n for n in model.graph.node}
    _move_to_cpu(
        [largest], by_name, f"did not fit the FPGA ({why}); moved to the CPU as the largest layer ({atom_weights(model, largest)} weights)"
    )
    return ", ".join(largest.nodes)


WIRING_OPS = {"Reshape", "Flatten", "Identity", "Dropout", "Transpose", "Squeeze", "Unsqueeze"}
ELEMENTWISE_CONSTANT_OPS = {"Mul", "Add", "Sub", "Div"}


def absorb_wiring_atoms(model: ModelWrapper, atom_list: list[Atom]) -> None:
    """Give FPGA atoms that only move data (reshapes, transposes) or scale it by a constant to a
    neighbouring CPU atom: a PS-PL round trip for them costs two DMA transfers and computes next to
    nothing (and hls4ml would make a lone constant Mul an ApplyAlpha layer of its own)."""
    by_name = {n.name: n for n in model.graph.node}

    constant_tensors = {i.name for i in model.graph.initializer}

    def cheap(node) -> bool:
        if node.op_type in WIRING_OPS:
            return True
        # an elementwise op with a constant operand: hls4ml would make it a layer of its own
        return node.op_type in ELEMENTWISE_CONSTANT_OPS and any(name in constant_tensors for name in node.input[1:])

    def wiring(atom: Atom) -> bool:
        return all(cheap(by_name[name]) for name in atom.nodes)

    def no_layer_run(index: int) -> list[Atom] | None:
        """The run of FPGA atoms around ``index`` when none of them has a Dense/Conv and a CPU atom borders it."""
        lo = hi = index
        while lo > 0 and atom_list[lo - 1].placement == "fpga":
            lo -= 1
        while hi + 1 < len(atom_list) and atom_list[hi + 1].placement == "fpga":
            hi += 1
        run = atom_list[lo : hi + 1]
        borders_cpu = (lo > 0 and atom_list[lo - 1].placement == "cpu") or (
            hi + 1 < len(atom_list) and atom_list[hi + 1].placement == "cpu"
        )
        has_layer = any(by_name[name].op_type in LINEAR_OPS for atom in run for name in atom.nodes)
        return run if borders_cpu and not has_layer else None

    changed = True
    quantized = any(n.op_type in QUANTIZERS for n in model.graph.node)
    while changed:
        changed = False
        for index, atom in enumerate(atom_list):
            if quantized and atom.placement == "cpu" and _pull_to_quantizer(model, atom_list, index, by_name):
                changed = True
            if atom.placement == "fpga" and not wiring(atom):
                run = no_layer_run(index)
                if run is not None:  # an FPGA segment without a single Dense/Conv: not worth two DMA transfers
                    changed |= _move_to_cpu(
                        run, by_name, "no Dense/Conv layer in this FPGA stretch: kept with the CPU segment next to it (no PS-PL round trip)"
                    )
                continue
            if atom.placement != "fpga":
                continue
            neighbours = [atom_list[i] for i in (index - 1, index + 1) if 0 <= i < len(atom_list)]
            if any(n.placement == "cpu" for n in neighbours):
                changed |= _move_to_cpu(
                    [atom], by_name, "only moves or scales data: kept with the CPU segment next to it (no PS-PL round trip)"
                )


def _pull_to_quantizer(model: ModelWrapper, atom_list: list[Atom], index: int, by_name: dict) -> bool:
    """In a quantized model, let a CPU atom take the FPGA atoms after it up to the next activation
    quantizer, when no Dense/Conv comes first: the FPGA segment then starts from quantized values
    (repeated by ``_requantize_input``) instead of a float BatchNorm/bias chain it could only
    approximate."""
    run = []
    for atom in atom_list[index + 1 :]:
        if atom.placement != "fpga":
            return False
        ops = [by_name[name].op_type for name in atom.nodes]
        if any(op in LINEAR_OPS for op in ops) or any(is_pinned(by_name[name]) for name in atom.nodes):
            return False
        run.append(atom)
        if any(op in QUANTIZERS for op in ops):
            break
    else:
        return False
    return _move_to_cpu(
        run, by_name, "moved with the CPU layer before it up to its output quantizer (the FPGA part starts from quantized values)"
    )


def _move_to_cpu(run: list[Atom], by_name: dict, reason: str) -> bool:
    """Place the atoms of ``run`` on the CPU with ``reason`` (recorded on their nodes); a run with a
    node the user put on the FPGA stays where it is. Returns whether anything moved."""
    if any(placement_of(by_name[name]) == "fpga" and is_pinned(by_name[name]) for atom in run for name in atom.nodes):
        return False
    for atom in run:
        atom.placement = "cpu"
        for name in atom.nodes:
            _set_meta(by_name[name], PLACEMENT_KEY, "cpu")
            _set_meta(by_name[name], REASON_KEY, reason)
        atom.reasons = [f"{name}: {reason}" for name in atom.nodes]
    return bool(run)
