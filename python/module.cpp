// The pybind11 module lvmmed_ext._C: loading it registers the ops (static initialisers of ops*.cpp);
// it also reports what this binary was compiled with.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace py = pybind11;

namespace {

// How many threads an at::parallel_for of this binary really runs on: the CPU glue hands graphs to torch's
// intra-op pool through at::parallel_for, which silently runs serially when the binary is compiled without
// OpenMP (INTRA_OP_PARALLEL undefined), whatever torch.get_num_threads() says.
int64_t cpu_parallel_threads() {
  std::atomic<int64_t> most{0};
  const int64_t tasks = 4 * std::max(1, at::get_num_threads());
  at::parallel_for(0, tasks, 1, [&](int64_t, int64_t) {
    const int64_t t = static_cast<int64_t>(at::get_thread_num()) + 1;
    int64_t cur = most.load();
    while (cur < t && !most.compare_exchange_weak(cur, t)) {
    }
  });
  return most.load();
}

}  // namespace

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
#ifdef INTRA_OP_PARALLEL
        d["cpu_parallel"] = true;
#else
        d["cpu_parallel"] = false;
#endif
        return d;
      },
      "Facts baked into this binary: package and torch versions, CUDA backend, CUDA archs, compiler, whether its "
      "CPU kernels run on torch's intra-op thread pool.");
  m.def("cpu_parallel_threads", &cpu_parallel_threads,
        "The number of threads a parallel loop of the CPU glue runs on now (torch.get_num_threads() when the "
        "binary was built with OpenMP, 1 otherwise).");
}
