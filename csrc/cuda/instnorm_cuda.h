// Launchers of the instance_norm CUDA kernels. Raw pointers and an explicit stream; no torch headers.
#pragma once
#include <cuda_runtime_api.h>

#include "../dtype.h"
#include "../instnorm.h"

namespace gandid {
// All pointers (in prm too) are device pointers. x, y: (N, C, HW) or (N, HW, C) when channels_last.
cudaError_t instance_norm_cuda(const InstNormParams<float>& prm, DType dtype, bool channels_last, const void* x,
                               void* y, cudaStream_t stream);
cudaError_t instance_norm_cuda(const InstNormParams<double>& prm, DType dtype, bool channels_last, const void* x,
                               void* y, cudaStream_t stream);
}  // namespace gandid
