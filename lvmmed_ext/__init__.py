"""lvmmed_ext: LVM-Med-style graph-matching self-supervised pretraining with a compiled (CPU/CUDA) core.

Importing the package loads the compiled core and registers the ``torch.ops.lvmmed`` operators.
"""

import torch  # noqa: F401  (the core links against the running torch: import it first)

from ._loader import load_extension

_C = load_extension()

from . import reference  # noqa: E402
from .heads.gm import LVMMedHead  # noqa: E402
from .imle import imle  # noqa: E402
from .losses import gm_loss  # noqa: E402
from .models.pretrained import load_pretrained  # noqa: E402
from .ops import (  # noqa: E402
    edge_affinity,
    global_affinity,
    knn_graph,
    local_affinity,
    vertex_affinity,
)
from .qap import linear_assignment, qap_objective, solve_qap  # noqa: E402

__version__ = _C.build_info()["version"]

__all__ = ["global_affinity", "reference", "__version__"]
__all__ += ["edge_affinity", "knn_graph", "local_affinity", "vertex_affinity"]
__all__ += ["load_pretrained"]
__all__ += ["linear_assignment", "qap_objective", "solve_qap"]
__all__ += ["imle", "gm_loss", "LVMMedHead"]
