// The lvmmed operator library (schemas in op_schemas.h). Backends attach in python/<subject>_cpu.cpp /
// <subject>_cuda.cpp, fake kernels and autograd in lvmmed_ext/ops.py and lvmmed_ext/qap.py.
#include <torch/library.h>

#include "op_schemas.h"

TORCH_LIBRARY(lvmmed, m) {
  lvmmed::glue::define_ops(m);
}
