"""lvmmed_ext: LVM-Med-style graph-matching self-supervised pretraining with a compiled (CPU/CUDA) core.

Importing the package loads the compiled core and registers the ``torch.ops.lvmmed`` operators.
"""

import torch  # noqa: F401  (the core links against the running torch: import it first)

from ._loader import load_extension

_C = load_extension()

from . import reference  # noqa: E402
from .ops import global_affinity  # noqa: E402
from .qap import linear_assignment, qap_objective, solve_qap  # noqa: E402

__version__ = _C.build_info()["version"]

__all__ = ["global_affinity", "reference", "__version__"]
__all__ += ["linear_assignment", "qap_objective", "solve_qap"]
