// The test-only emulated CUDA backend (build/emu/_lvmmed_emu*.so, built by scripts/setup.sh, never installed): the
// lvmmed_emu operator library, whose kernels are the CUDA glue (python/*_cuda.cpp compiled with LVMMED_EMULATED) on
// CPU tensors running csrc/cuda under the CPU emulator of csrc/emu; and a pybind11 module that controls the emulator
// (device attributes, schedule, access checker, launch counters, reports) for tests/emulator.py.
#include <ATen/ATen.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include <string>

#include "control.h"
#include "lvmmed_emu/cuda.h"
#include "op_schemas.h"
#include "toy_kernels.h"

namespace py = pybind11;
namespace emu = lvmmed::emu;

namespace {

// The emulator's self-test kernels on a CPU buffer (float32 or int32), in place.
void toy(const at::Tensor& buf, c10::string_view name, int64_t n, at::IntArrayRef grid, at::IntArrayRef block,
         int64_t smem, int64_t opt_in) {
  TORCH_CHECK_VALUE(buf.is_cpu() && buf.is_contiguous(), "buf must be a contiguous CPU tensor");
  TORCH_CHECK_VALUE(grid.size() == 3 && block.size() == 3, "grid and block must have 3 entries");
  const auto dim = [](at::IntArrayRef d) {
    return dim3(static_cast<unsigned>(d[0]), static_cast<unsigned>(d[1]), static_cast<unsigned>(d[2]));
  };
  const std::string kernel(name);
  const cudaError_t err =
      lvmmed::toys::run_toy_kernel(kernel.c_str(), buf.data_ptr(), static_cast<int>(n), dim(grid), dim(block),
                                   static_cast<std::size_t>(smem), static_cast<int>(opt_in), nullptr);
  TORCH_CHECK(err == cudaSuccess, "CUDA error (emulated) ", cudaGetErrorName(err), ": ", cudaGetErrorString(err));
}

// float32 values rounded through the emulator's __half (bf16: __nv_bfloat16) and back.
at::Tensor round_half(const at::Tensor& x, bool bf16) {
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat, "x must be float32");
  auto in = x.contiguous();
  auto out = at::empty_like(in);
  const float* src = in.const_data_ptr<float>();
  float* dst = out.mutable_data_ptr<float>();
  for (int64_t i = 0; i < in.numel(); ++i)
    dst[i] = bf16 ? __bfloat162float(__float2bfloat16_rn(src[i])) : __half2float(__float2half_rn(src[i]));
  return out;
}

}  // namespace

TORCH_LIBRARY(lvmmed_emu, m) {
  lvmmed::glue::define_ops(m);
  m.def("toy(Tensor(a!) buf, str name, int n, int[] grid, int[] block, int smem, int opt_in) -> ()");
  m.def("round_half(Tensor x, bool bf16) -> Tensor");
}

TORCH_LIBRARY_IMPL(lvmmed_emu, CPU, m) {
  m.impl("toy", &toy);
  m.impl("round_half", &round_half);
}

PYBIND11_MODULE(_lvmmed_emu, m) {
  m.doc() = "Control of the CUDA emulator behind torch.ops.lvmmed_emu (test-only)";
  m.def(
      "device",
      [] {
        const emu::DeviceProps& d = emu::device_props();
        py::dict out;
        out["multiprocessors"] = d.multiprocessors;
        out["max_threads_per_block"] = d.max_threads_per_block;
        out["max_grid_x"] = d.max_grid_x;
        out["max_grid_y"] = d.max_grid_y;
        out["max_grid_z"] = d.max_grid_z;
        out["smem_per_block"] = d.smem_per_block;
        out["smem_per_block_optin"] = d.smem_per_block_optin;
        return out;
      },
      "The attributes the emulated device reports (an H100 by default).");
  m.def(
      "set_device",
      [](py::kwargs kw) {
        emu::DeviceProps& d = emu::device_props();
        for (const auto& item : kw) {
          const auto key = item.first.cast<std::string>();
          const int v = item.second.cast<int>();
          if (key == "multiprocessors")
            d.multiprocessors = v;
          else if (key == "max_threads_per_block")
            d.max_threads_per_block = v;
          else if (key == "max_grid_x")
            d.max_grid_x = v;
          else if (key == "max_grid_y")
            d.max_grid_y = v;
          else if (key == "max_grid_z")
            d.max_grid_z = v;
          else if (key == "smem_per_block")
            d.smem_per_block = v;
          else if (key == "smem_per_block_optin")
            d.smem_per_block_optin = v;
          else
            throw py::value_error("unknown device attribute '" + key + "'");
        }
      },
      "Changes attributes of the emulated device (e.g. max_grid_x=3, smem_per_block_optin=16384).");
  m.def("reset_device", &emu::reset_device_props, "Back to the H100's attributes; forgets cudaFuncSetAttribute.");
  m.def(
      "set_schedule",
      [](const std::string& order, std::uint64_t seed) {
        if (order == "forward")
          emu::set_schedule(emu::Schedule::Forward, seed);
        else if (order == "reverse")
          emu::set_schedule(emu::Schedule::Reverse, seed);
        else if (order == "shuffle")
          emu::set_schedule(emu::Schedule::Shuffle, seed);
        else
          throw py::value_error("order must be 'forward', 'reverse' or 'shuffle', got '" + order + "'");
      },
      py::arg("order"), py::arg("seed") = 0, "Order in which the threads of a block and the blocks of a grid run.");
  m.def("set_checks", &emu::set_checks, py::arg("on"), "Turns the access checker on or off.");
  m.def("checks_on", &emu::checks_on, "Whether accesses are checked (on, and the kernels are instrumented).");
  m.def("instrumented", &emu::checker_compiled_in, "Whether the kernels were compiled with the access hooks.");
  m.def("launch_counts", &emu::launch_counts, "Launches per kernel name since the last reset.");
  m.def(
      "launch_stats",
      [] {
        py::dict out;
        for (const auto& [name, st] : emu::launch_stats()) {
          py::dict d;
          d["launches"] = st.launches;
          d["multi_block"] = st.multi_block;
          d["multi_warp"] = st.multi_warp;
          d["dynamic_smem"] = st.dynamic_smem;
          d["no_dynamic_smem"] = st.no_dynamic_smem;
          d["opt_in"] = st.opt_in;
          d["at_grid_cap"] = st.at_grid_cap;
          out[py::str(name)] = d;
        }
        return out;
      },
      "Per kernel since the last reset: launches, and how many had several blocks, several warps, dynamic shared "
      "memory, none, more than 48 KB (opt-in), a grid at a lowered device limit.");
  m.def("reset_launch_counts", &emu::reset_launch_counts);
  m.def(
      "take_reports",
      [] {
        py::list out;
        for (const auto& r : emu::take_reports()) {
          py::dict d;
          d["kind"] = r.kind;
          d["kernel"] = r.kernel;
          d["message"] = r.message;
          out.append(d);
        }
        return out;
      },
      "The problems found since the last call: [{'kind', 'kernel', 'message'}] (the list is cleared).");
  m.def("total_reports", &emu::total_reports, "Problems found since the module was loaded.");
  m.def(
      "counters",
      [] {
        const emu::Counters c = emu::counters();
        py::dict d;
        d["blocks"] = c.blocks;
        d["barriers"] = c.barriers;
        d["warp_collectives"] = c.warp_collectives;
        d["checked_accesses"] = c.checked_accesses;
        return d;
      },
      "Blocks run, barriers and warp collectives completed, accesses checked since the last reset.");
  m.def("reset_counters", &emu::reset_counters);
}
