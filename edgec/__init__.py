"""edgec: a deployment compiler from ONNX/QONNX to verified FPGA (hls4ml) projects.

Public API::

    import edgec
    result = edgec.build("model.onnx", target="pynq-z2", output_dir="build", data="data.npz")
    result.report["verification"]["argmax_agreement"]
    result.predict(x)
    edgec.estimate("model.onnx", target="pynq-z2")["totals"]   # the same design, nothing built
"""

from edgec.frontend.load import load_model as load
from edgec.pipeline.build import BuildResult, build, simulate_folder
from edgec.pipeline.design import DesignOptions
from edgec.pipeline.estimate import estimate
from edgec.targets import list_targets as targets
from edgec.targets import load_target
from edgec.version import __version__

__all__ = ["BuildResult", "DesignOptions", "build", "estimate", "load", "load_target", "simulate_folder", "targets", "__version__"]
