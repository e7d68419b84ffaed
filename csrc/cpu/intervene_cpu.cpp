// CPU kernel of intervene_pixelnorm: vectorised over pixels (NCHW) or channels (NHWC),
// parallel over (row group, pixel block) tasks with at::parallel_for (OpenMP in torch's CPU build).
//
// Each task reads its rows' block of x once from memory: pass 1 (sum of squares over channels)
// pulls the block into cache and pass 2 (scale and write) reads it back from cache, so the op
// moves one read of x and one write of y, the floor for a memory-bound op.
#include "../intervene.h"
#include "intervene_cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace gandid {
namespace {

constexpr int64_t kMaxBlock = 4096;  // pixels per task (stack buffers)
constexpr int64_t kBlockBytes = 512 * 1024;  // one row's block of x, re-read from L2 in pass 2

constexpr int64_t kLanes = 32;  // pixels whose running sums live in registers (4 AVX vectors)

// acc[i] = sum_c x'[c, i]^2 for i < lanes (lanes = kFixed when kFixed > 0, so the compiler
// unrolls the pixel loop and keeps the sums in registers). mask nullptr: m = 1 (no region).
template <typename scalar_t, typename acc_t, int64_t kFixed>
inline void sum_squares_chunk(const InterveneParams<acc_t>& prm, const scalar_t* __restrict xr,
                              const acc_t* __restrict mask, bool touched, acc_t* __restrict acc,
                              int64_t lanes = kFixed) {
  constexpr int64_t kMax = kFixed > 0 ? kFixed : kLanes;
  const int64_t n = kFixed > 0 ? kFixed : lanes;
  acc_t sums[kMax] = {};
  const int64_t HW = prm.HW;
  for (int64_t c = 0; c < prm.C; ++c) {
    const scalar_t* __restrict xc = xr + c * HW;
    const acc_t a = touched ? prm.alpha[c] : acc_t(0);
    const acc_t target = prm.value ? prm.value[c] : acc_t(0);
    if (a != acc_t(0) && mask == nullptr) {  // no region: x' = x (1 - α) + α k at every pixel
      const acc_t keep = acc_t(1) - a, shift = a * target;
      for (int64_t i = 0; i < n; ++i) {
        const acc_t v = static_cast<acc_t>(xc[i]) * keep + shift;
        sums[i] += v * v;
      }
    } else if (a != acc_t(0)) {
      for (int64_t i = 0; i < n; ++i) {
        const acc_t v = intervened(static_cast<acc_t>(xc[i]), a * mask[i], target);
        sums[i] += v * v;
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const acc_t v = static_cast<acc_t>(xc[i]);
        sums[i] += v * v;
      }
    }
  }
  for (int64_t i = 0; i < n; ++i) acc[i] = sums[i];
}

// From the sums of squares of row r's pixels [p0, p0 + len): its own β (written to beta_out), the
// lender's β (kept when r is the lender) and the reciprocal divisor. Branch-free loops, so they
// vectorise: with few channels a scalar sqrt and divide per pixel would cost as much as the rest.
template <typename scalar_t, typename acc_t>
inline void beta_step(const InterveneParams<acc_t>& prm, int64_t r, int64_t p0, int64_t len, bool lender,
                      acc_t* __restrict acc, acc_t* __restrict lender_beta, acc_t* __restrict inv,
                      scalar_t* __restrict beta_out) {
  const acc_t inv_c = acc_t(1) / acc_t(prm.C), eps = prm.eps;
  for (int64_t p = 0; p < len; ++p) acc[p] = std::sqrt(acc[p] * inv_c + eps);  // acc now holds β
  scalar_t* __restrict bo = beta_out + r * prm.HW + p0;
  for (int64_t p = 0; p < len; ++p) bo[p] = static_cast<scalar_t>(acc[p]);
  if (lender)
    for (int64_t p = 0; p < len; ++p) lender_beta[p] = acc[p];
  const acc_t* __restrict d = prm.beta_in ? prm.beta_in + r * prm.HW + p0 : lender_beta;
  if (prm.normalize)
    for (int64_t p = 0; p < len; ++p) inv[p] = acc_t(1) / d[p];
  else
    for (int64_t p = 0; p < len; ++p) inv[p] = acc_t(1);
}

template <typename scalar_t, typename acc_t>
void nchw_task(const InterveneParams<acc_t>& prm, const scalar_t* __restrict x, scalar_t* __restrict y,
               scalar_t* __restrict beta_out, int64_t group, int64_t p0, int64_t len) {
  const int64_t C = prm.C, HW = prm.HW;
  acc_t acc[kMaxBlock], inv[kMaxBlock], mask[kMaxBlock], lender_beta[kMaxBlock];
  const int64_t first = group_begin(prm, group), last = group_end(prm, group);
  for (int64_t k = first; k < last; ++k) {
    const int64_t r = group_row(prm, k);
    const bool lender = k == first;
    const bool touched = row_touched(prm, r);
    const bool uniform = prm.region == nullptr;  // m = 1 at every pixel of a touched row
    if (touched && !uniform)
      for (int64_t p = 0; p < len; ++p) mask[p] = row_mask(prm, r, p0 + p);
    const scalar_t* xr = x + r * C * HW + p0;
    scalar_t* yr = y + r * C * HW + p0;

    // Pass 1: acc[p] = sum_c x'[c, p]^2, in chunks of kLanes pixels whose sums stay in registers
    // across the channel loop (this beat streaming each channel's run into an L1 array here).
    for (int64_t q = 0; q < len; q += kLanes) {
      const int64_t lanes = std::min(kLanes, len - q);
      if (lanes == kLanes)
        sum_squares_chunk<scalar_t, acc_t, kLanes>(prm, xr + q, uniform ? nullptr : mask + q, touched, acc + q);
      else
        sum_squares_chunk<scalar_t, acc_t, 0>(prm, xr + q, uniform ? nullptr : mask + q, touched, acc + q, lanes);
    }

    beta_step(prm, r, p0, len, lender, acc, lender_beta, inv, beta_out);

    // Pass 2: y = x' / d, re-reading this row block of x from cache
    for (int64_t c = 0; c < C; ++c) {
      scalar_t* __restrict yc = yr + c * HW;
      const scalar_t* __restrict xc = xr + c * HW;
      const acc_t a = touched ? prm.alpha[c] : acc_t(0);
      const acc_t target = prm.value ? prm.value[c] : acc_t(0);
      if (a != acc_t(0) && uniform) {
        const acc_t keep = acc_t(1) - a, shift = a * target;
        for (int64_t p = 0; p < len; ++p)
          yc[p] = static_cast<scalar_t>((static_cast<acc_t>(xc[p]) * keep + shift) * inv[p]);
      } else if (a != acc_t(0)) {
        for (int64_t p = 0; p < len; ++p)
          yc[p] = static_cast<scalar_t>(intervened(static_cast<acc_t>(xc[p]), a * mask[p], target) * inv[p]);
      } else {
        for (int64_t p = 0; p < len; ++p) yc[p] = static_cast<scalar_t>(static_cast<acc_t>(xc[p]) * inv[p]);
      }
    }
  }
}

constexpr int64_t kPixelsNHWC = 64;  // pixels per sub-block: pass 2 re-reads them from L1/L2

// A pixel's intervention over its contiguous channels, x' = x - α m (x - k) written per case:
// kPlain x' = x; kScale x' = x keep_c and kAffine x' = x keep_c + shift_c, with keep = 1 - α and
// shift = α k computed once per row (no region: m = 1 at every pixel); kMasked / kMaskedInsert
// compute α_c m inline for a region's per-pixel m.
enum class Xform { kPlain, kScale, kAffine, kMasked, kMaskedInsert };

template <typename acc_t>
struct PixelOp {
  const acc_t* keep;   // (C,) for kScale / kAffine
  const acc_t* shift;  // (C,) for kAffine
  const acc_t* alpha;  // (C,) for kMasked*
  const acc_t* value;  // (C,) for kMaskedInsert
  acc_t m;             // the pixel's mask value, for kMasked*
};

template <Xform F, typename acc_t>
inline acc_t apply(acc_t v, const PixelOp<acc_t>& op, int64_t c) {
  if constexpr (F == Xform::kScale) return v * op.keep[c];
  if constexpr (F == Xform::kAffine) return v * op.keep[c] + op.shift[c];
  if constexpr (F == Xform::kMasked) return v * (acc_t(1) - op.alpha[c] * op.m);
  if constexpr (F == Xform::kMaskedInsert) return intervened(v, op.alpha[c] * op.m, op.value[c]);
  return v;
}

template <Xform F, typename scalar_t, typename acc_t>
inline acc_t pixel_sum_squares(const scalar_t* __restrict xp, int64_t C, const PixelOp<acc_t>& op) {
  acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < C; ++c) {
    const acc_t v = apply<F>(static_cast<acc_t>(xp[c]), op, c);
    sum += v * v;
  }
  return sum;
}

template <Xform F, typename scalar_t, typename acc_t>
inline void pixel_write(const scalar_t* __restrict xp, scalar_t* __restrict yp, int64_t C, const PixelOp<acc_t>& op,
                        acc_t inv) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) yp[c] = static_cast<scalar_t>(apply<F>(static_cast<acc_t>(xp[c]), op, c) * inv);
}

// Calls fn(std::integral_constant<Xform, f>) so the channel loops are compiled per transform.
template <typename Fn>
inline void with_xform(Xform f, Fn&& fn) {
  switch (f) {
    case Xform::kPlain: return fn(std::integral_constant<Xform, Xform::kPlain>());
    case Xform::kScale: return fn(std::integral_constant<Xform, Xform::kScale>());
    case Xform::kAffine: return fn(std::integral_constant<Xform, Xform::kAffine>());
    case Xform::kMasked: return fn(std::integral_constant<Xform, Xform::kMasked>());
    case Xform::kMaskedInsert: return fn(std::integral_constant<Xform, Xform::kMaskedInsert>());
  }
}

template <typename scalar_t, typename acc_t>
void nhwc_task(const InterveneParams<acc_t>& prm, const scalar_t* __restrict x, scalar_t* __restrict y,
               scalar_t* __restrict beta_out, int64_t group, int64_t p0, int64_t len) {
  const int64_t C = prm.C, HW = prm.HW;
  acc_t lender_beta[kMaxBlock];
  thread_local std::vector<acc_t> scratch;
  scratch.resize(2 * C);
  PixelOp<acc_t> op{scratch.data(), scratch.data() + C, prm.alpha, prm.value, acc_t(0)};
  const int64_t first = group_begin(prm, group), last = group_end(prm, group);
  for (int64_t k = first; k < last; ++k) {
    const int64_t r = group_row(prm, k);
    const bool lender = k == first;
    const bool touched = row_touched(prm, r);
    Xform row_f = Xform::kPlain;  // the row's transform, unless a region varies it per pixel
    if (touched && prm.region == nullptr) {
      auto* keep = scratch.data();
      auto* shift = keep + C;
      for (int64_t c = 0; c < C; ++c) keep[c] = acc_t(1) - prm.alpha[c];
      if (prm.value != nullptr)
        for (int64_t c = 0; c < C; ++c) shift[c] = prm.alpha[c] * prm.value[c];
      row_f = prm.value != nullptr ? Xform::kAffine : Xform::kScale;
    }
    const bool per_pixel = touched && prm.region != nullptr;
    const Xform masked = prm.value != nullptr ? Xform::kMaskedInsert : Xform::kMasked;
    for (int64_t q0 = 0; q0 < len; q0 += kPixelsNHWC) {
      const int64_t n = std::min(kPixelsNHWC, len - q0);
      acc_t acc[kPixelsNHWC], inv[kPixelsNHWC], mask[kPixelsNHWC];
      const scalar_t* xb = x + (r * HW + p0 + q0) * C;
      scalar_t* yb = y + (r * HW + p0 + q0) * C;
      // Pass 1: per pixel, the sum of squares over the contiguous channel axis.
      if (per_pixel) {
        for (int64_t i = 0; i < n; ++i) {
          op.m = mask[i] = row_mask(prm, r, p0 + q0 + i);
          with_xform(op.m != acc_t(0) ? masked : Xform::kPlain,
                     [&](auto F) { acc[i] = pixel_sum_squares<F()>(xb + i * C, C, op); });
        }
      } else {
        with_xform(row_f, [&](auto F) {
          for (int64_t i = 0; i < n; ++i) acc[i] = pixel_sum_squares<F()>(xb + i * C, C, op);
        });
      }
      beta_step(prm, r, p0 + q0, n, lender, acc, lender_beta + q0, inv, beta_out);
      // Pass 2: y = x' / d, the sub-block of x still in cache.
      if (per_pixel) {
        for (int64_t i = 0; i < n; ++i) {
          op.m = mask[i];
          with_xform(op.m != acc_t(0) ? masked : Xform::kPlain,
                     [&](auto F) { pixel_write<F()>(xb + i * C, yb + i * C, C, op, inv[i]); });
        }
      } else {
        with_xform(row_f, [&](auto F) {
          for (int64_t i = 0; i < n; ++i) pixel_write<F()>(xb + i * C, yb + i * C, C, op, inv[i]);
        });
      }
    }
  }
}

template <typename scalar_t, typename acc_t>
void run(const InterveneParams<acc_t>& prm, bool channels_last, const void* x_, void* y_, void* beta_) {
  const auto* x = static_cast<const scalar_t*>(x_);
  auto* y = static_cast<scalar_t*>(y_);
  auto* beta_out = static_cast<scalar_t*>(beta_);
  int64_t block = std::max<int64_t>(16, kBlockBytes / (prm.C * int64_t(sizeof(scalar_t))));
  block = std::min<int64_t>({block, kMaxBlock, prm.HW});
  const int64_t blocks = (prm.HW + block - 1) / block;
  const int64_t tasks = prm.groups * blocks;
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t group = t / blocks, p0 = (t % blocks) * block;
      const int64_t len = std::min(block, prm.HW - p0);
      if (channels_last)
        nhwc_task<scalar_t, acc_t>(prm, x, y, beta_out, group, p0, len);
      else
        nchw_task<scalar_t, acc_t>(prm, x, y, beta_out, group, p0, len);
    }
  });
}

}  // namespace

void intervene_pixelnorm_cpu(const InterveneParams<float>& prm, DType dtype, bool channels_last, const void* x,
                             void* y, void* beta_out) {
  switch (dtype) {
    case DType::kFloat: return run<float, float>(prm, channels_last, x, y, beta_out);
    case DType::kHalf: return run<c10::Half, float>(prm, channels_last, x, y, beta_out);
    case DType::kBFloat16: return run<c10::BFloat16, float>(prm, channels_last, x, y, beta_out);
    default: break;
  }
}

void intervene_pixelnorm_cpu(const InterveneParams<double>& prm, DType, bool channels_last, const void* x, void* y,
                             void* beta_out) {
  run<double, double>(prm, channels_last, x, y, beta_out);
}

}  // namespace gandid
