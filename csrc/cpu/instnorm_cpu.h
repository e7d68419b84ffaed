#pragma once
#include "../dtype.h"
#include "../instnorm.h"

namespace gandid {
// x, y: (N, C, HW) contiguous, or (N, HW, C) when channels_last; y unused when !prm.normalize.
void instance_norm_cpu(const InstNormParams<float>& prm, DType dtype, bool channels_last, const void* x, void* y);
void instance_norm_cpu(const InstNormParams<double>& prm, DType dtype, bool channels_last, const void* x, void* y);
}  // namespace gandid
