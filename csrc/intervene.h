// Scalar math and parameters shared by the CPU and CUDA kernels of intervene_pixelnorm.
// No torch headers: nvcc compiles the CUDA side of this on machines without a GPU.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GANDID_HD __host__ __device__ __forceinline__
#else
#define GANDID_HD inline
#endif

namespace gandid {

// Raw views of one call's arguments. Pointers are contiguous; nullptr means "argument absent".
// Rows are processed in groups: a lender row (beta_src[r] == r) first, then the rows that borrow
// its β. A borrowing row divides by the lender's β after the lender's own intervention, at the
// same pixel. With beta_in, or without borrowing rows, every row is a group of one and
// group_offsets / group_rows are nullptr (no per-call index tensors).
template <typename acc_t>
struct InterveneParams {
  using acc_type = acc_t;
  int64_t N = 0, C = 0, HW = 0;
  const acc_t* alpha = nullptr;       // (C,) per-unit strength; nullptr: no intervention
  const acc_t* value = nullptr;       // (C,) insertion values; nullptr: ablation (k = 0)
  const acc_t* region = nullptr;      // (region_rows, HW) mask in [0, 1]; nullptr: everywhere
  int64_t region_rows = 1;            // 1 (shared by all rows) or N
  const uint8_t* rows = nullptr;      // (N,) 1 = intervened; nullptr: every row
  const acc_t* beta_in = nullptr;     // (N, HW) external β; overrides borrowing
  const int64_t* group_offsets = nullptr;  // (groups + 1,) into group_rows; nullptr: row g is group g
  const int64_t* group_rows = nullptr;     // (N,) row indices, lender first in each group
  int64_t groups = 0;                      // N when group_offsets is nullptr
  bool normalize = true;
  acc_t eps = acc_t(1e-8);
};

// x' = x - s (x - k), with s = α_c m_p (0 for untouched rows) and k = 0 for ablation.
template <typename acc_t>
GANDID_HD acc_t intervened(acc_t x, acc_t strength, acc_t target) {
  return x - strength * (x - target);
}

// β = sqrt(mean_c x'^2 + eps)
template <typename acc_t>
GANDID_HD acc_t pixel_beta(acc_t sum_of_squares, int64_t channels, acc_t eps) {
  return sqrt(sum_of_squares / acc_t(channels) + eps);
}

// Mask value of row r at pixel p, zero for rows that are not intervened.
template <typename acc_t>
GANDID_HD acc_t row_mask(const InterveneParams<acc_t>& prm, int64_t r, int64_t p) {
  if (prm.rows != nullptr && prm.rows[r] == 0) return acc_t(0);
  if (prm.region == nullptr) return acc_t(1);
  return prm.region[(prm.region_rows == 1 ? 0 : r) * prm.HW + p];
}

// Group g's rows are group_row(k) for k in [group_begin(g), group_end(g)), its lender first. For any
// op's parameters with group_offsets / group_rows (InterveneParams, InstNormParams).
template <typename Params>
GANDID_HD int64_t group_begin(const Params& prm, int64_t g) {
  return prm.group_offsets != nullptr ? prm.group_offsets[g] : g;
}

template <typename Params>
GANDID_HD int64_t group_end(const Params& prm, int64_t g) {
  return prm.group_offsets != nullptr ? prm.group_offsets[g + 1] : g + 1;
}

template <typename Params>
GANDID_HD int64_t group_row(const Params& prm, int64_t k) {
  return prm.group_rows != nullptr ? prm.group_rows[k] : k;
}

template <typename acc_t>
GANDID_HD bool row_touched(const InterveneParams<acc_t>& prm, int64_t r) {
  return prm.alpha != nullptr && (prm.rows == nullptr || prm.rows[r] != 0);
}

}  // namespace gandid
