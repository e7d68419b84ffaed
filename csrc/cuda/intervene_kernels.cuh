// CUDA kernels of intervene_pixelnorm, on raw pointers, and their launch shape.
// Device code only (no launches): intervene_cuda.cu launches them, and the tests run them on the
// host under an emulation of the CUDA thread model (tests/cuda_emulation) where no GPU is lent.
//
// NCHW: one thread per (row group, pixel); consecutive threads take consecutive pixels, so every
// load and store of a channel plane is coalesced. Pass 1 sums squares over channels, pass 2
// re-reads the same column (now in L1/L2) and writes y. A group is a lender row followed by the
// rows that borrow its β, so the lender's β stays in a register.
// NHWC: one warp per (row group, pixel); lanes stride the contiguous channel axis, and a warp
// shuffle reduces the sum of squares.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../intervene.h"

namespace gandid {
namespace cuda_kernels {

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename scalar_t>
__device__ __forceinline__ scalar_t from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename scalar_t>
__device__ __forceinline__ scalar_t from_acc(double v) { return v; }

template <typename scalar_t, typename acc_t>
__global__ void nchw_kernel(const InterveneParams<acc_t> prm, const scalar_t* __restrict__ x,
                            scalar_t* __restrict__ y, scalar_t* __restrict__ beta_out) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= prm.groups * prm.HW) return;
  const int64_t group = idx / prm.HW, p = idx % prm.HW;
  const int64_t C = prm.C, HW = prm.HW;
  acc_t lender_beta = acc_t(1);
  for (int64_t k = prm.group_offsets[group]; k < prm.group_offsets[group + 1]; ++k) {
    const int64_t r = prm.group_rows[k];
    const acc_t m = row_touched(prm, r) ? row_mask(prm, r, p) : acc_t(0);
    const scalar_t* xr = x + r * C * HW + p;
    acc_t acc = 0;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t s = m != acc_t(0) ? prm.alpha[c] * m : acc_t(0);
      const acc_t v = intervened(to_acc(xr[c * HW]), s, prm.value ? prm.value[c] : acc_t(0));
      acc += v * v;
    }
    const acc_t b = pixel_beta(acc, C, prm.eps);
    beta_out[r * HW + p] = from_acc<scalar_t>(b);
    if (k == prm.group_offsets[group]) lender_beta = b;
    const acc_t d = prm.beta_in ? prm.beta_in[r * HW + p] : lender_beta;
    const acc_t inv = prm.normalize ? acc_t(1) / d : acc_t(1);
    scalar_t* yr = y + r * C * HW + p;
    for (int64_t c = 0; c < C; ++c) {
      const acc_t s = m != acc_t(0) ? prm.alpha[c] * m : acc_t(0);
      yr[c * HW] = from_acc<scalar_t>(intervened(to_acc(xr[c * HW]), s, prm.value ? prm.value[c] : acc_t(0)) * inv);
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void nhwc_kernel(const InterveneParams<acc_t> prm, const scalar_t* __restrict__ x,
                            scalar_t* __restrict__ y, scalar_t* __restrict__ beta_out) {
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= prm.groups * prm.HW) return;  // whole warps exit together: shuffles stay full
  const int64_t group = warp / prm.HW, p = warp % prm.HW;
  const int64_t C = prm.C, HW = prm.HW;
  acc_t lender_beta = acc_t(1);
  for (int64_t k = prm.group_offsets[group]; k < prm.group_offsets[group + 1]; ++k) {
    const int64_t r = prm.group_rows[k];
    const acc_t m = row_touched(prm, r) ? row_mask(prm, r, p) : acc_t(0);
    const scalar_t* xp = x + (r * HW + p) * C;
    acc_t acc = 0;
    for (int64_t c = lane; c < C; c += 32) {
      const acc_t s = m != acc_t(0) ? prm.alpha[c] * m : acc_t(0);
      const acc_t v = intervened(to_acc(xp[c]), s, prm.value ? prm.value[c] : acc_t(0));
      acc += v * v;
    }
    acc = warp_sum(acc);
    const acc_t b = pixel_beta(acc, C, prm.eps);
    if (lane == 0) beta_out[r * HW + p] = from_acc<scalar_t>(b);
    if (k == prm.group_offsets[group]) lender_beta = b;
    const acc_t d = prm.beta_in ? prm.beta_in[r * HW + p] : lender_beta;
    const acc_t inv = prm.normalize ? acc_t(1) / d : acc_t(1);
    scalar_t* yp = y + (r * HW + p) * C;
    for (int64_t c = lane; c < C; c += 32) {
      const acc_t s = m != acc_t(0) ? prm.alpha[c] * m : acc_t(0);
      yp[c] = from_acc<scalar_t>(intervened(to_acc(xp[c]), s, prm.value ? prm.value[c] : acc_t(0)) * inv);
    }
  }
}

// Grid of the launch: 256-thread blocks; one thread per (group, pixel) in NCHW, one warp per
// (group, pixel) in NHWC.
struct LaunchShape {
  int64_t blocks;
  int threads;
};

template <typename acc_t>
inline LaunchShape launch_shape(const InterveneParams<acc_t>& prm, bool channels_last) {
  const int threads = 256;
  const int64_t work = prm.groups * prm.HW * (channels_last ? 32 : 1);
  return {(work + threads - 1) / threads, threads};
}

}  // namespace cuda_kernels
}  // namespace gandid
