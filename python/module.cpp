// The pybind11 module lvmmed_ext._C: loading it registers the ops (static initialisers of ops*.cpp);
// it also reports what this binary was compiled with.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "lvmmed_ext compiled core: registers torch.ops.lvmmed.* and reports build facts";
  m.def(
      "build_info",
      [] {
        py::dict d;
        d["version"] = LVMMED_VERSION;
        d["torch_version"] = LVMMED_TORCH_VERSION;
#ifdef LVMMED_WITH_CUDA
        d["cuda"] = true;
#else
        d["cuda"] = false;
#endif
        d["cuda_archs"] = LVMMED_CUDA_ARCHS;
        d["compiler"] = __VERSION__;
        d["cplusplus"] = __cplusplus;
        return d;
      },
      "Facts baked into this binary: package and torch versions, CUDA backend, CUDA archs, compiler.");
}
