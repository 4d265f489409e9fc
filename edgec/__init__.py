"""edgec: a deployment compiler from ONNX/QONNX to verified FPGA (hls4ml) projects.

Public API::

    import edgec
    result = edgec.build("model.onnx", target="pynq-z2", output_dir="build", data="data.npz")
    result.report["verification"]["argmax_agreement"]
    result.predict(x)
"""

__version__ = "0.1.0"

from edgec.build import BuildResult, build, simulate_folder  # noqa: E402
from edgec.frontend.load import load_model as load  # noqa: E402
from edgec.targets import list_targets as targets  # noqa: E402
from edgec.targets import load_target  # noqa: E402

__all__ = ["BuildResult", "build", "load", "load_target", "simulate_folder", "targets", "__version__"]
