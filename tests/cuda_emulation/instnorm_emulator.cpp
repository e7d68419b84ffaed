// gandid's CUDA kernels of instance_norm (csrc/cuda/instnorm_kernels.cuh) on the host, under the
// CUDA thread-model emulation of emulator.cpp (this file includes it whole, so the module also
// runs intervene_pixelnorm's kernels and can stand in for the whole extension). Its bindings are
// renamed into a function this module calls, which leaves emulator.cpp and its test untouched.
#include <torch/extension.h>

#pragma push_macro("PYBIND11_MODULE")
#undef PYBIND11_MODULE
#define PYBIND11_MODULE(name, variable) static void gandid_intervene_emulator_bindings(pybind11::module_& variable)
#include "emulator.cpp"
#pragma pop_macro("PYBIND11_MODULE")

#include "cuda/instnorm_kernels.cuh"
#include "instnorm_glue.h"

namespace gandid {
namespace {

template <typename scalar_t, typename acc_t>
void run_instnorm_kernels(const InstNormParams<acc_t>& prm, bool channels_last, const at::Tensor& x, void* y) {
  const auto shape = cuda_kernels::instnorm_launch_shape(prm, channels_last);
  const auto* xs = reinterpret_cast<const scalar_t*>(x.data_ptr());
  auto* ys = reinterpret_cast<scalar_t*>(y);
  const std::function<void()> body = [&] {
    if (channels_last)
      cuda_kernels::instnorm_nhwc_kernel<scalar_t, acc_t>(prm, xs, ys);
    else
      cuda_kernels::instnorm_nchw_kernel<scalar_t, acc_t>(prm, xs, ys);
  };
  emu::counters.pixels = 0;
  emu::counters.lanes = 0;
  emu::launch(shape.blocks, shape.threads, shape.shared_bytes, body);
}

// Same signature and checks as the extension's instance_norm_forward_out, for CPU tensors.
void instance_norm_forward_out(const at::Tensor& x, const std::optional<at::Tensor>& stats_in,
                               const std::optional<at::Tensor>& group_offsets,
                               const std::optional<at::Tensor>& group_rows, bool normalize, double eps,
                               const std::optional<at::Tensor>& y, const std::optional<at::Tensor>& stats_out) {
  TORCH_CHECK(x.device().is_cpu(), "emulator: CPU tensors only");
  glue::prepare_instnorm(x, stats_in, group_offsets, group_rows, normalize, eps, y, stats_out,
                         [&](const auto& prm, DType dtype, bool channels_last) {
                           using acc_t = typename std::decay_t<decltype(prm)>::acc_type;
                           void* yp = y.has_value() ? y->data_ptr() : nullptr;
                           if constexpr (std::is_same_v<acc_t, double>) {
                             run_instnorm_kernels<double, double>(prm, channels_last, x, yp);
                           } else {
                             switch (dtype) {
                               case DType::kFloat: return run_instnorm_kernels<float, float>(prm, channels_last, x, yp);
                               case DType::kHalf: return run_instnorm_kernels<__half, float>(prm, channels_last, x, yp);
                               case DType::kBFloat16:
                                 return run_instnorm_kernels<__nv_bfloat16, float>(prm, channels_last, x, yp);
                               default: TORCH_CHECK(false, "emulator: unexpected dtype");
                             }
                           }
                         });
}

}  // namespace
}  // namespace gandid

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  gandid_intervene_emulator_bindings(m);
  m.doc() = "gandid's CUDA kernels (intervene_pixelnorm and instance_norm) under host emulation (tests only)";
  m.def("instance_norm_forward_out", &gandid::instance_norm_forward_out,
        "instance-norm statistics and normalisation by the CUDA kernels, emulated");
}
