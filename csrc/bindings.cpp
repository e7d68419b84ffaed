// Python bindings of intervene_pixelnorm: device dispatch (checks and row groups in glue.h).
// Python (gandid/ops) allocates the outputs and registers the op with torch.library.
#include <torch/extension.h>

#include <sys/mman.h>

#include <cstdlib>
#include <optional>
#include <vector>

#include "cpu/instnorm_cpu.h"
#include "cpu/intervene_cpu.h"
#include "glue.h"
#include "instnorm_glue.h"

namespace gandid {

#ifdef GANDID_WITH_CUDA
void forward_cuda(const InterveneParams<float>& prm, DType dtype, bool channels_last, const at::Tensor& x,
                  at::Tensor& y, at::Tensor& beta_out);
void forward_cuda(const InterveneParams<double>& prm, DType dtype, bool channels_last, const at::Tensor& x,
                  at::Tensor& y, at::Tensor& beta_out);
void instance_norm_forward_cuda(const InstNormParams<float>& prm, DType dtype, bool channels_last,
                                const at::Tensor& x, void* y);
void instance_norm_forward_cuda(const InstNormParams<double>& prm, DType dtype, bool channels_last,
                                const at::Tensor& x, void* y);
#endif

bool with_cuda() {
#ifdef GANDID_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// Writes y (x's shape and memory format) and beta_out ((N, 1, H, W) contiguous, x's dtype).
// Arguments as glue::prepare describes them (gandid/ops/fused.py passes them checked).
void forward_out(const at::Tensor& x, const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& region,
                 const std::optional<at::Tensor>& value, const std::optional<at::Tensor>& rows,
                 const std::optional<at::Tensor>& group_offsets, const std::optional<at::Tensor>& group_rows,
                 const std::optional<at::Tensor>& beta_in, bool normalize, double eps, at::Tensor y,
                 at::Tensor beta_out) {
  TORCH_CHECK(!x.is_cuda() || with_cuda(), "intervene_pixelnorm: this build of the extension has no CUDA support");
  glue::prepare(x, alpha, region, value, rows, group_offsets, group_rows, beta_in, normalize, eps, y, beta_out,
                [&](const auto& prm, DType dtype, bool channels_last) {
                  if (x.is_cuda()) {
#ifdef GANDID_WITH_CUDA
                    forward_cuda(prm, dtype, channels_last, x, y, beta_out);
#endif
                  } else {
                    intervene_pixelnorm_cpu(prm, dtype, channels_last, x.data_ptr(), y.data_ptr(),
                                            beta_out.data_ptr());
                  }
                });
}

// instance_norm: writes y (x's shape and memory format; absent when !normalize) and stats_out
// ((N, 2, C) contiguous in the accumulation dtype; absent when not wanted). See instnorm_glue.h.
void instance_norm_forward_out(const at::Tensor& x, const std::optional<at::Tensor>& stats_in,
                               const std::optional<at::Tensor>& group_offsets,
                               const std::optional<at::Tensor>& group_rows, bool normalize, double eps,
                               const std::optional<at::Tensor>& y, const std::optional<at::Tensor>& stats_out) {
  TORCH_CHECK(!x.is_cuda() || with_cuda(), "instance_norm: this build of the extension has no CUDA support");
  glue::prepare_instnorm(x, stats_in, group_offsets, group_rows, normalize, eps, y, stats_out,
                         [&](const auto& prm, DType dtype, bool channels_last) {
                           void* yp = y.has_value() ? y->data_ptr() : nullptr;
                           if (x.is_cuda()) {
#ifdef GANDID_WITH_CUDA
                             instance_norm_forward_cuda(prm, dtype, channels_last, x, yp);
#endif
                           } else {
                             instance_norm_cpu(prm, dtype, channels_last, x.data_ptr(), yp);
                           }
                         });
}

// An uninitialised tensor like x (same memory format). Large CPU outputs are backed by transparent
// huge pages: a fresh allocation then faults 2 MiB at a time instead of 4 KiB, which is most of the
// cost of writing into new memory on Linux (clone() of 128 MB runs at a third of copy_ here).
at::Tensor empty_like_fast(const at::Tensor& x) {
  const bool channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t nbytes = static_cast<size_t>(x.numel()) * x.element_size();
  if (!x.device().is_cpu() || nbytes < 4 * kHuge) return at::empty_like(x, fmt);
  const size_t size = (nbytes + kHuge - 1) / kHuge * kHuge;
  void* ptr = nullptr;
  if (posix_memalign(&ptr, kHuge, size) != 0) return at::empty_like(x, fmt);
#ifdef MADV_HUGEPAGE
  madvise(ptr, size, MADV_HUGEPAGE);  // advice only: without THP this is an ordinary allocation
#endif
  std::vector<int64_t> strides(x.dim(), 1);
  if (channels_last) {
    strides = c10::get_channels_last_strides_2d(x.sizes());
  } else {
    for (int64_t d = x.dim() - 2; d >= 0; --d) strides[d] = strides[d + 1] * x.size(d + 1);
  }
  return at::from_blob(ptr, x.sizes(), strides, [](void* p) { free(p); }, x.options());
}

}  // namespace gandid

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gandid fused op intervene_pixelnorm (CPU, and CUDA when built with it)";
  m.def("forward_out", &gandid::forward_out, "intervene + pixel norm into preallocated outputs");
  m.def("instance_norm_forward_out", &gandid::instance_norm_forward_out,
        "instance-norm statistics and normalisation into preallocated outputs");
  m.def("with_cuda", &gandid::with_cuda, "whether this build has CUDA kernels");
  m.def("empty_like", &gandid::empty_like_fast, "uninitialised output like x (huge pages for large CPU tensors)");
}
