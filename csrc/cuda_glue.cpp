// Torch side of the CUDA path: current stream, device guard, error check. Built only with CUDA.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include "cuda/instnorm_cuda.h"
#include "cuda/intervene_cuda.h"

namespace gandid {
namespace {

template <typename acc_t>
void launch_checked(const InterveneParams<acc_t>& prm, DType dtype, bool channels_last, const at::Tensor& x,
                    at::Tensor& y, at::Tensor& beta_out) {
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  const cudaError_t err =
      intervene_pixelnorm_cuda(prm, dtype, channels_last, x.data_ptr(), y.data_ptr(), beta_out.data_ptr(), stream);
  TORCH_CHECK(err == cudaSuccess, "intervene_pixelnorm: CUDA launch failed: ", cudaGetErrorString(err));
}

template <typename acc_t>
void instnorm_launch_checked(const InstNormParams<acc_t>& prm, DType dtype, bool channels_last, const at::Tensor& x,
                             void* y) {
  const c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.get_device()).stream();
  const cudaError_t err = instance_norm_cuda(prm, dtype, channels_last, x.data_ptr(), y, stream);
  TORCH_CHECK(err == cudaSuccess, "instance_norm: CUDA launch failed: ", cudaGetErrorString(err));
}

}  // namespace

void instance_norm_forward_cuda(const InstNormParams<float>& prm, DType dtype, bool channels_last,
                                const at::Tensor& x, void* y) {
  instnorm_launch_checked(prm, dtype, channels_last, x, y);
}

void instance_norm_forward_cuda(const InstNormParams<double>& prm, DType dtype, bool channels_last,
                                const at::Tensor& x, void* y) {
  instnorm_launch_checked(prm, dtype, channels_last, x, y);
}

void forward_cuda(const InterveneParams<float>& prm, DType dtype, bool channels_last, const at::Tensor& x,
                  at::Tensor& y, at::Tensor& beta_out) {
  launch_checked(prm, dtype, channels_last, x, y, beta_out);
}

void forward_cuda(const InterveneParams<double>& prm, DType dtype, bool channels_last, const at::Tensor& x,
                  at::Tensor& y, at::Tensor& beta_out) {
  launch_checked(prm, dtype, channels_last, x, y, beta_out);
}

}  // namespace gandid
