// Launchers of the CUDA kernels of intervene_pixelnorm (kernels in intervene_kernels.cuh).
#include "intervene_cuda.h"
#include "intervene_kernels.cuh"

namespace gandid {
namespace {

template <typename scalar_t, typename acc_t>
cudaError_t launch(const InterveneParams<acc_t>& prm, bool channels_last, const void* x, void* y, void* beta,
                   cudaStream_t stream) {
  const cuda_kernels::LaunchShape shape = cuda_kernels::launch_shape<scalar_t>(prm, channels_last);
  if (shape.blocks == 0) return cudaSuccess;
  const auto* xs = static_cast<const scalar_t*>(x);
  auto* ys = static_cast<scalar_t*>(y);
  auto* bs = static_cast<scalar_t*>(beta);
  if (channels_last)
    cuda_kernels::nhwc_kernel<scalar_t, acc_t>
        <<<shape.blocks, shape.threads, 0, stream>>>(prm, xs, ys, bs, shape.nhwc_lanes);
  else
    cuda_kernels::nchw_kernel<scalar_t, acc_t>
        <<<shape.blocks, shape.threads, shape.shared_bytes, stream>>>(prm, xs, ys, bs, shape.nchw);
  return cudaGetLastError();
}

}  // namespace

cudaError_t intervene_pixelnorm_cuda(const InterveneParams<float>& prm, DType dtype, bool channels_last,
                                     const void* x, void* y, void* beta_out, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat: return launch<float, float>(prm, channels_last, x, y, beta_out, stream);
    case DType::kHalf: return launch<__half, float>(prm, channels_last, x, y, beta_out, stream);
    case DType::kBFloat16: return launch<__nv_bfloat16, float>(prm, channels_last, x, y, beta_out, stream);
    default: return cudaErrorInvalidValue;
  }
}

cudaError_t intervene_pixelnorm_cuda(const InterveneParams<double>& prm, DType, bool channels_last, const void* x,
                                     void* y, void* beta_out, cudaStream_t stream) {
  return launch<double, double>(prm, channels_last, x, y, beta_out, stream);
}

}  // namespace gandid
