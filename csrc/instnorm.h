// Parameters and scalar math of instance_norm (per-(row, channel) statistics over the feature map,
// then (x - mean) / std), shared by the CPU and CUDA kernels. No torch headers: nvcc compiles the
// CUDA side of this on machines without a GPU.
#pragma once
#include <cmath>
#include <cstdint>

#include "intervene.h"  // GANDID_HD, group_begin / group_end / group_row

namespace gandid {

// Raw views of one call's arguments; nullptr means "absent". Statistics are (N, 2, C) contiguous in
// acc_t: [:, 0] the means, [:, 1] sqrt(biased var + eps). Rows run in groups as in
// InterveneParams: a lender row (stats_src[r] == r) first, then the rows that normalise with its
// statistics; without borrowing every row is its own group and the group pointers are nullptr.
template <typename acc_t>
struct InstNormParams {
  using acc_type = acc_t;
  int64_t N = 0, C = 0, HW = 0;
  const acc_t* stats_in = nullptr;  // (N, 2, C): normalise with these instead (overrides borrowing)
  acc_t* stats_out = nullptr;       // (N, 2, C): each row's own statistics; nullptr: not wanted
  const int64_t* group_offsets = nullptr;
  const int64_t* group_rows = nullptr;
  int64_t groups = 0;
  bool normalize = true;  // false: statistics only (y is not written)
  double eps = 1e-5;
};

// Own statistics are accumulated in float64 around a shift (the plane's first element), in one
// pass: s1 = sum (x - shift), s2 = sum (x - shift)^2. The shift removes the cancellation of a large
// mean; float64 sums make the rest exact to ~1e-16 relative for any float32/half input.
struct Moments {
  double s1 = 0, s2 = 0;
};

GANDID_HD void add_moments(Moments& m, double v) {
  m.s1 += v;
  m.s2 += v * v;
}

// mean = shift + s1 / n, var = s2 / n - (s1 / n)^2 (biased, clamped at 0), std = sqrt(var + eps)
template <typename acc_t>
GANDID_HD void finish_moments(const Moments& m, int64_t count, double shift, double eps, acc_t* mean, acc_t* std_) {
  const double d = m.s1 / double(count);
  double var = m.s2 / double(count) - d * d;
  var = var > 0 ? var : 0;
  *mean = static_cast<acc_t>(shift + d);
  *std_ = static_cast<acc_t>(sqrt(var + eps));
}

// Whether row k of a group (r = its row) needs its own statistics: wanted as output, or the lender's
// statistics are the divisor of the group.
template <typename acc_t>
GANDID_HD bool needs_moments(const InstNormParams<acc_t>& prm, bool lender) {
  return prm.stats_out != nullptr || (prm.normalize && prm.stats_in == nullptr && lender);
}

// group_begin / group_end / group_row: intervene.h's, for any params with group_offsets / group_rows.

}  // namespace gandid
