// CUDA kernels of intervene_pixelnorm, on raw pointers, and their launch shape.
// Device code only (no launches): intervene_cuda.cu launches them, and the tests run them on the
// host under an emulation of the CUDA thread model (tests/cuda_emulation) where no GPU is lent.
//
// NCHW: a block takes a tile of P consecutive pixels of one row group (a lender row and the rows
// that borrow its β); its threads split as P pixels x S channel slices, so a warp reads 32 / P
// channel runs of P consecutive pixels (whole 32-byte sectors) and small maps (8x8 layers with 512
// channels) still give the GPU hundreds of thousands of threads. Pass 1 stages the tile of x in
// shared memory while summing squares per slice, the slices' sums meet in shared memory, and
// pass 2 writes y from the staged tile, so x is read from global memory once.
// NHWC: 32 lanes per (row group, pixel), fewer when C < 32 (a warp then takes several pixels);
// lanes stride the contiguous channel axis, shuffles reduce the sum of squares, and pass 2
// re-reads the pixel's channels from L1.
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

// How an NCHW block is split (see launch_shape).
struct NchwLayout {
  int pixels;   // P, pixels per block
  bool staged;  // the tile of x (C x P) fits in shared memory
};

template <typename scalar_t, typename acc_t>
__global__ void nchw_kernel(const InterveneParams<acc_t> prm, const scalar_t* __restrict__ x,
                            scalar_t* __restrict__ y, scalar_t* __restrict__ beta_out, const NchwLayout layout) {
  extern __shared__ __align__(16) unsigned char gandid_smem[];
  const int P = layout.pixels, S = int(blockDim.x) / P;
  const int px = int(threadIdx.x) % P, slice = int(threadIdx.x) / P;
  const int64_t C = prm.C, HW = prm.HW, tiles = (HW + P - 1) / P;
  const int64_t group = blockIdx.x / tiles, p = (blockIdx.x % tiles) * P + px;
  const bool active = p < HW;
  acc_t* partial = reinterpret_cast<acc_t*>(gandid_smem);  // (S, P) sums of squares per slice
  acc_t* inverse = partial + S * P;                         // (P,) 1 / divisor
  acc_t* lender_beta = inverse + P;                         // (P,) the group's lender's β
  scalar_t* tile = reinterpret_cast<scalar_t*>(lender_beta + P);  // (C, P) x, when staged
  const int64_t first = group_begin(prm, group), last = group_end(prm, group);
  for (int64_t k = first; k < last; ++k) {
    const int64_t r = group_row(prm, k);
    const acc_t m = active && row_touched(prm, r) ? row_mask(prm, r, p) : acc_t(0);
    const scalar_t* xr = x + r * C * HW + p;
    acc_t sum = 0;
    if (active) {
#pragma unroll 4  // several loads in flight per thread
      for (int64_t c = slice; c < C; c += S) {
        const scalar_t raw = xr[c * HW];
        if (layout.staged) tile[c * P + px] = raw;
        const acc_t s = m != acc_t(0) ? prm.alpha[c] * m : acc_t(0);
        const acc_t v = intervened(to_acc(raw), s, prm.value ? prm.value[c] : acc_t(0));
        sum += v * v;
      }
    }
    partial[slice * P + px] = sum;
    __syncthreads();  // partials complete
    if (slice == 0 && active) {
      acc_t total = 0;
      for (int j = 0; j < S; ++j) total += partial[j * P + px];
      const acc_t b = pixel_beta(total, C, prm.eps);
      beta_out[r * HW + p] = from_acc<scalar_t>(b);
      if (k == first) lender_beta[px] = b;
      const acc_t d = prm.beta_in ? prm.beta_in[r * HW + p] : lender_beta[px];
      inverse[px] = prm.normalize ? acc_t(1) / d : acc_t(1);
    }
    __syncthreads();  // inverse complete
    if (active) {
      const acc_t inv = inverse[px];
      scalar_t* yr = y + r * C * HW + p;
#pragma unroll 4
      for (int64_t c = slice; c < C; c += S) {
        const scalar_t raw = layout.staged ? tile[c * P + px] : xr[c * HW];
        const acc_t s = m != acc_t(0) ? prm.alpha[c] * m : acc_t(0);
        yr[c * HW] = from_acc<scalar_t>(intervened(to_acc(raw), s, prm.value ? prm.value[c] : acc_t(0)) * inv);
      }
    }
    // No barrier before the next row: a thread's tile entries are its own, slice 0 has read every
    // partial before the second barrier, and inverse is rewritten only after the next first one.
  }
}

// Sum over the `lanes` lanes (a power of two <= 32, aligned) that share a pixel. Every lane of
// the warp calls it, so the full-warp shuffles are valid.
template <typename acc_t>
__device__ __forceinline__ acc_t segment_sum(acc_t v, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename scalar_t, typename acc_t>
__global__ void nhwc_kernel(const InterveneParams<acc_t> prm, const scalar_t* __restrict__ x,
                            scalar_t* __restrict__ y, scalar_t* __restrict__ beta_out, const int lanes) {
  // A warp takes 32 / lanes consecutive pixels of one row group, so all its lanes run the same rows.
  const int64_t C = prm.C, HW = prm.HW, pixels_per_warp = 32 / lanes;
  const int64_t warps_per_group = (HW + pixels_per_warp - 1) / pixels_per_warp;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  if (warp >= prm.groups * warps_per_group) return;  // whole warps exit together: shuffles stay full
  const int lane_in_warp = threadIdx.x % 32, lane = lane_in_warp % lanes;
  const int64_t group = warp / warps_per_group;
  const int64_t p = (warp % warps_per_group) * pixels_per_warp + lane_in_warp / lanes;
  const bool active = p < HW;  // lanes past the last pixel still join the shuffles
  acc_t lender_beta = acc_t(1);
  const int64_t first = group_begin(prm, group), last = group_end(prm, group);
  for (int64_t k = first; k < last; ++k) {
    const int64_t r = group_row(prm, k);
    const acc_t m = active && row_touched(prm, r) ? row_mask(prm, r, p) : acc_t(0);
    const scalar_t* xp = x + (r * HW + p) * C;
    acc_t acc = 0;
    if (active) {
      for (int64_t c = lane; c < C; c += lanes) {
        const acc_t s = m != acc_t(0) ? prm.alpha[c] * m : acc_t(0);
        const acc_t v = intervened(to_acc(xp[c]), s, prm.value ? prm.value[c] : acc_t(0));
        acc += v * v;
      }
    }
    acc = segment_sum(acc, lanes);
    if (!active) continue;
    const acc_t b = pixel_beta(acc, C, prm.eps);
    if (lane == 0) beta_out[r * HW + p] = from_acc<scalar_t>(b);
    if (k == first) lender_beta = b;
    const acc_t d = prm.beta_in ? prm.beta_in[r * HW + p] : lender_beta;
    const acc_t inv = prm.normalize ? acc_t(1) / d : acc_t(1);
    scalar_t* yp = y + (r * HW + p) * C;
    for (int64_t c = lane; c < C; c += lanes) {
      const acc_t s = m != acc_t(0) ? prm.alpha[c] * m : acc_t(0);
      yp[c] = from_acc<scalar_t>(intervened(to_acc(xp[c]), s, prm.value ? prm.value[c] : acc_t(0)) * inv);
    }
  }
}

// Grid of a launch: 256-thread blocks. NCHW: one block per (row group, tile of P pixels), with
// P = 32 on large maps and 16 or 8 on small ones (more blocks); the tile of x is staged when it
// fits the default 48 KiB of shared memory (float32: up to 750 channels at P = 16), else pass 2
// re-reads x from L2. NHWC: `lanes` = min(32, C rounded up to a power of two) lanes per pixel, so
// a warp takes 32 / lanes pixels (one when C >= 17; 16-channel layers fill the warp with two).
struct LaunchShape {
  int64_t blocks;
  int threads;
  size_t shared_bytes;
  NchwLayout nchw;
  int nhwc_lanes;
};

constexpr int kThreads = 256;
constexpr size_t kSharedBytes = 48 * 1024;

template <typename scalar_t, typename acc_t>
inline LaunchShape launch_shape(const InterveneParams<acc_t>& prm, bool channels_last) {
  if (channels_last) {
    int lanes = 1;
    while (lanes < 32 && lanes < prm.C) lanes *= 2;
    const int64_t pixels_per_warp = 32 / lanes;
    const int64_t warps = prm.groups * ((prm.HW + pixels_per_warp - 1) / pixels_per_warp);
    return {(warps * 32 + kThreads - 1) / kThreads, kThreads, 0, {0, false}, lanes};
  }
  const int P = prm.HW >= 1024 ? 32 : prm.HW >= 16 ? 16 : 8;
  const size_t reduce_bytes = size_t(kThreads + 2 * P) * sizeof(acc_t);
  const size_t tile_bytes = size_t(prm.C) * P * sizeof(scalar_t);
  const bool staged = reduce_bytes + tile_bytes <= kSharedBytes;
  const int64_t blocks = prm.groups * ((prm.HW + P - 1) / P);
  return {blocks, kThreads, reduce_bytes + (staged ? tile_bytes : 0), {P, staged}, 0};
}

}  // namespace cuda_kernels
}  // namespace gandid
