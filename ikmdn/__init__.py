"""ikmdn: learned multi-solution inverse kinematics with mixture density networks.

The public API is torch-free: arms, the ONNX runtime and the solver. Training and export live in
ikmdn.train and ikmdn.export (they need the [train] extra).
"""

__version__ = "0.1.0"

from ikmdn.arms import Arm, arm_from_spec, get_arm, list_arms  # noqa: E402
from ikmdn.errors import IKMDNError, JobFailedError  # noqa: E402
from ikmdn.mixture import Mixture  # noqa: E402
from ikmdn.refine import RefineSettings  # noqa: E402
from ikmdn.solve import IKSolver, Solutions  # noqa: E402

__all__ = [
    "Arm", "IKMDNError", "IKSolver", "JobFailedError", "Mixture", "RefineSettings", "Solutions",
    "__version__", "arm_from_spec", "get_arm", "list_arms",
]
