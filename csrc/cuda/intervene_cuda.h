// Launchers of the CUDA kernels. Raw pointers and an explicit stream; no torch headers.
#pragma once
#include <cuda_runtime_api.h>

#include "../dtype.h"
#include "../intervene.h"

namespace gandid {
// All pointers (in prm too) are device pointers. x, y: (N, C, HW) or (N, HW, C) when channels_last.
// Returns the launch error (cudaSuccess when the kernel was queued).
cudaError_t intervene_pixelnorm_cuda(const InterveneParams<float>& prm, DType dtype, bool channels_last,
                                     const void* x, void* y, void* beta_out, cudaStream_t stream);
cudaError_t intervene_pixelnorm_cuda(const InterveneParams<double>& prm, DType dtype, bool channels_last,
                                     const void* x, void* y, void* beta_out, cudaStream_t stream);
}  // namespace gandid
