#pragma once
#include "../intervene.h"
#include "../dtype.h"

namespace gandid {
// x, y: (N, C, HW) contiguous, or (N, HW, C) when channels_last; beta_out: (N, HW), x's dtype.
void intervene_pixelnorm_cpu(const InterveneParams<float>& prm, DType dtype, bool channels_last, const void* x,
                             void* y, void* beta_out);
void intervene_pixelnorm_cpu(const InterveneParams<double>& prm, DType dtype, bool channels_last, const void* x,
                             void* y, void* beta_out);
}  // namespace gandid
