// CPU kernel of instance_norm: parallel over (row group, channel) planes with at::parallel_for.
//
// NCHW: a task takes one channel of one row group. For each row it reads the plane once for the
// statistics (float64 sums around a shift, see instnorm.h) and once more for (x - mean) / std; the
// second read hits cache (a 64x64 float32 plane is 16 KiB, 256x256 is 256 KiB), so the op moves
// about one read of x and one write of y. NHWC: a task takes a block of kChannelBlock contiguous
// channels of one row group, accumulating per-channel sums while it walks the pixels.
#include "../instnorm.h"
#include "instnorm_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

namespace gandid {
namespace {

constexpr int64_t kChannelBlock = 64;

template <typename scalar_t>
inline double widen(scalar_t v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
inline double widen<double>(double v) {
  return v;
}

template <typename scalar_t, typename acc_t>
void nchw_task(const InstNormParams<acc_t>& prm, const scalar_t* __restrict x, scalar_t* __restrict y, int64_t group,
               int64_t c) {
  const int64_t C = prm.C, HW = prm.HW;
  acc_t lender_mean = 0, lender_std = 1;
  const int64_t first = group_begin(prm, group), last = group_end(prm, group);
  for (int64_t k = first; k < last; ++k) {
    const int64_t r = group_row(prm, k);
    const bool lender = k == first;
    const scalar_t* __restrict xp = x + (r * C + c) * HW;
    if (needs_moments(prm, lender)) {
      const double shift = widen(xp[0]);
      double s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t p = 0; p < HW; ++p) {
        const double v = widen(xp[p]) - shift;
        s1 += v;
        s2 += v * v;
      }
      acc_t mean, std_;
      finish_moments(Moments{s1, s2}, HW, shift, prm.eps, &mean, &std_);
      if (prm.stats_out != nullptr) {
        prm.stats_out[r * 2 * C + c] = mean;
        prm.stats_out[r * 2 * C + C + c] = std_;
      }
      if (lender) lender_mean = mean, lender_std = std_;
    }
    if (!prm.normalize) continue;
    const acc_t mean = prm.stats_in ? prm.stats_in[r * 2 * C + c] : lender_mean;
    const acc_t inv = acc_t(1) / (prm.stats_in ? prm.stats_in[r * 2 * C + C + c] : lender_std);
    scalar_t* __restrict yp = y + (r * C + c) * HW;
#pragma omp simd
    for (int64_t p = 0; p < HW; ++p) yp[p] = static_cast<scalar_t>((static_cast<acc_t>(xp[p]) - mean) * inv);
  }
}

template <typename scalar_t, typename acc_t>
void nhwc_task(const InstNormParams<acc_t>& prm, const scalar_t* __restrict x, scalar_t* __restrict y, int64_t group,
               int64_t c0) {
  const int64_t C = prm.C, HW = prm.HW, nb = std::min(kChannelBlock, C - c0);
  acc_t lender_mean[kChannelBlock], lender_std[kChannelBlock], mean[kChannelBlock], inv[kChannelBlock];
  const int64_t first = group_begin(prm, group), last = group_end(prm, group);
  for (int64_t k = first; k < last; ++k) {
    const int64_t r = group_row(prm, k);
    const bool lender = k == first;
    const scalar_t* __restrict xr = x + r * HW * C + c0;
    if (needs_moments(prm, lender)) {
      double shift[kChannelBlock], s1[kChannelBlock] = {}, s2[kChannelBlock] = {};
      for (int64_t j = 0; j < nb; ++j) shift[j] = widen(xr[j]);
      for (int64_t p = 0; p < HW; ++p) {
        const scalar_t* __restrict xp = xr + p * C;
#pragma omp simd
        for (int64_t j = 0; j < nb; ++j) {
          const double v = widen(xp[j]) - shift[j];
          s1[j] += v;
          s2[j] += v * v;
        }
      }
      for (int64_t j = 0; j < nb; ++j) {
        acc_t m, s;
        finish_moments(Moments{s1[j], s2[j]}, HW, shift[j], prm.eps, &m, &s);
        if (prm.stats_out != nullptr) {
          prm.stats_out[r * 2 * C + c0 + j] = m;
          prm.stats_out[r * 2 * C + C + c0 + j] = s;
        }
        if (lender) lender_mean[j] = m, lender_std[j] = s;
      }
    }
    if (!prm.normalize) continue;
    for (int64_t j = 0; j < nb; ++j) {
      mean[j] = prm.stats_in ? prm.stats_in[r * 2 * C + c0 + j] : lender_mean[j];
      inv[j] = acc_t(1) / (prm.stats_in ? prm.stats_in[r * 2 * C + C + c0 + j] : lender_std[j]);
    }
    scalar_t* __restrict yr = y + r * HW * C + c0;
    for (int64_t p = 0; p < HW; ++p) {
      const scalar_t* __restrict xp = xr + p * C;
      scalar_t* __restrict yp = yr + p * C;
#pragma omp simd
      for (int64_t j = 0; j < nb; ++j) yp[j] = static_cast<scalar_t>((static_cast<acc_t>(xp[j]) - mean[j]) * inv[j]);
    }
  }
}

template <typename scalar_t, typename acc_t>
void run(const InstNormParams<acc_t>& prm, bool channels_last, const void* x_, void* y_) {
  const auto* x = static_cast<const scalar_t*>(x_);
  auto* y = static_cast<scalar_t*>(y_);
  if (prm.HW == 0 || prm.C == 0 || prm.N == 0) return;
  const int64_t per_group = channels_last ? (prm.C + kChannelBlock - 1) / kChannelBlock : prm.C;
  const int64_t tasks = prm.groups * per_group;
  // Small planes: several per task, so a thread's work outweighs the scheduling.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, prm.HW * (channels_last ? kChannelBlock : 1)));
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t group = t / per_group, i = t % per_group;
      if (channels_last)
        nhwc_task<scalar_t, acc_t>(prm, x, y, group, i * kChannelBlock);
      else
        nchw_task<scalar_t, acc_t>(prm, x, y, group, i);
    }
  });
}

}  // namespace

void instance_norm_cpu(const InstNormParams<float>& prm, DType dtype, bool channels_last, const void* x, void* y) {
  switch (dtype) {
    case DType::kFloat: return run<float, float>(prm, channels_last, x, y);
    case DType::kHalf: return run<c10::Half, float>(prm, channels_last, x, y);
    case DType::kBFloat16: return run<c10::BFloat16, float>(prm, channels_last, x, y);
    default: break;
  }
}

void instance_norm_cpu(const InstNormParams<double>& prm, DType, bool channels_last, const void* x, void* y) {
  run<double, double>(prm, channels_last, x, y);
}

}  // namespace gandid
