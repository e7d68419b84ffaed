// Launchers of the CUDA kernels of instance_norm (kernels in instnorm_kernels.cuh).
#include "instnorm_cuda.h"
#include "instnorm_kernels.cuh"

namespace gandid {
namespace {

template <typename scalar_t, typename acc_t>
cudaError_t launch(const InstNormParams<acc_t>& prm, bool channels_last, const void* x, void* y, cudaStream_t stream) {
  const cuda_kernels::InstNormLaunch shape = cuda_kernels::instnorm_launch_shape(prm, channels_last);
  if (shape.blocks == 0 || prm.HW == 0) return cudaSuccess;
  const auto* xs = static_cast<const scalar_t*>(x);
  auto* ys = static_cast<scalar_t*>(y);
  if (channels_last)
    cuda_kernels::instnorm_nhwc_kernel<scalar_t, acc_t><<<shape.blocks, shape.threads, shape.shared_bytes, stream>>>(
        prm, xs, ys);
  else
    cuda_kernels::instnorm_nchw_kernel<scalar_t, acc_t><<<shape.blocks, shape.threads, shape.shared_bytes, stream>>>(
        prm, xs, ys);
  return cudaGetLastError();
}

}  // namespace

cudaError_t instance_norm_cuda(const InstNormParams<float>& prm, DType dtype, bool channels_last, const void* x,
                               void* y, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat: return launch<float, float>(prm, channels_last, x, y, stream);
    case DType::kHalf: return launch<__half, float>(prm, channels_last, x, y, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16, float>(prm, channels_last, x, y, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t instance_norm_cuda(const InstNormParams<double>& prm, DType, bool channels_last, const void* x, void* y,
                               cudaStream_t stream) {
  return launch<double, double>(prm, channels_last, x, y, stream);
}

}  // namespace gandid
