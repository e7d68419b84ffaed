// CUDA kernels of instance_norm, on raw pointers, and their launch shape. Device code only:
// instnorm_cuda.cu launches them; tests/cuda_emulation runs them on the host where no GPU is lent.
//
// NCHW: one block per (row group, channel). For each row of the group the block's threads stride
// the (contiguous) plane summing float64 moments around a shift (instnorm.h), a warp shuffle and
// shared memory reduce them, thread 0 finishes the statistics, and the threads stride the plane
// again for (x - mean) / std (the plane, at most a few hundred KiB, is re-read from L2).
// NHWC: one block per (row group, tile of 32 channels): 32 lanes on consecutive channels (one
// 128-byte line per pixel for float32) x S slices of pixels; the slices' sums meet in shared memory.
#pragma once
#include "../instnorm.h"
#include "intervene_kernels.cuh"  // to_acc, from_acc, segment_sum

namespace gandid {
namespace cuda_kernels {

template <typename scalar_t>
__device__ __forceinline__ double widen(scalar_t v) {
  return static_cast<double>(to_acc(v));
}

template <typename scalar_t, typename acc_t>
__global__ void instnorm_nchw_kernel(const InstNormParams<acc_t> prm, const scalar_t* __restrict__ x,
                                     scalar_t* __restrict__ y) {
  extern __shared__ __align__(16) unsigned char gandid_smem[];
  const int tid = int(threadIdx.x), threads = int(blockDim.x), warps = threads / 32;
  const int warp = tid / 32, lane = tid % 32;
  double* partial = reinterpret_cast<double*>(gandid_smem);  // (2, warps): s1 then s2 per warp
  double* lender = partial + 2 * warps;                      // the lender's mean and std
  const int64_t C = prm.C, HW = prm.HW;
  const int64_t group = blockIdx.x / C, c = blockIdx.x % C;
  const int64_t first = group_begin(prm, group), last = group_end(prm, group);
  for (int64_t k = first; k < last; ++k) {
    const int64_t r = group_row(prm, k);
    const scalar_t* xp = x + (r * C + c) * HW;
    if (needs_moments(prm, k == first)) {  // the same for every thread of the block
      const double shift = widen(xp[0]);
      Moments m;
      for (int64_t p = tid; p < HW; p += threads) add_moments(m, widen(xp[p]) - shift);
      m.s1 = segment_sum(m.s1, 32);
      m.s2 = segment_sum(m.s2, 32);
      if (lane == 0) {
        partial[warp] = m.s1;
        partial[warps + warp] = m.s2;
      }
      __syncthreads();  // partials complete
      if (tid == 0) {
        Moments total;
        for (int w = 0; w < warps; ++w) {
          total.s1 += partial[w];
          total.s2 += partial[warps + w];
        }
        acc_t mean, std_;
        finish_moments(total, HW, shift, prm.eps, &mean, &std_);
        if (prm.stats_out != nullptr) {
          prm.stats_out[r * 2 * C + c] = mean;
          prm.stats_out[r * 2 * C + C + c] = std_;
        }
        if (k == first) {
          lender[0] = mean;
          lender[1] = std_;
        }
      }
    }
    // Every row: the lender's statistics are visible, and thread 0 has read the partials before
    // the next row's lanes overwrite them.
    __syncthreads();
    if (!prm.normalize) continue;
    const acc_t mean = prm.stats_in ? prm.stats_in[r * 2 * C + c] : acc_t(lender[0]);
    const acc_t inv = acc_t(1) / (prm.stats_in ? prm.stats_in[r * 2 * C + C + c] : acc_t(lender[1]));
    scalar_t* yp = y + (r * C + c) * HW;
    for (int64_t p = tid; p < HW; p += threads) yp[p] = from_acc<scalar_t>((to_acc(xp[p]) - mean) * inv);
  }
}

constexpr int kInstNormLanes = 32;  // NHWC: channels per block

template <typename scalar_t, typename acc_t>
__global__ void instnorm_nhwc_kernel(const InstNormParams<acc_t> prm, const scalar_t* __restrict__ x,
                                     scalar_t* __restrict__ y) {
  extern __shared__ __align__(16) unsigned char gandid_smem[];
  constexpr int L = kInstNormLanes;
  const int tid = int(threadIdx.x), slices = int(blockDim.x) / L;
  const int lane = tid % L, slice = tid / L;
  double* partial = reinterpret_cast<double*>(gandid_smem);  // (2, slices, L)
  double* lender = partial + 2 * slices * L;                 // (2, L): the lender's means and stds
  const int64_t C = prm.C, HW = prm.HW, tiles = (C + L - 1) / L;
  const int64_t group = blockIdx.x / tiles, c = (blockIdx.x % tiles) * L + lane;
  const bool active = c < C;
  const int64_t first = group_begin(prm, group), last = group_end(prm, group);
  for (int64_t k = first; k < last; ++k) {
    const int64_t r = group_row(prm, k);
    const scalar_t* xr = x + r * HW * C;
    if (needs_moments(prm, k == first)) {
      const double shift = active ? widen(xr[c]) : 0.0;
      Moments m;
      if (active)
        for (int64_t p = slice; p < HW; p += slices) add_moments(m, widen(xr[p * C + c]) - shift);
      partial[slice * L + lane] = m.s1;
      partial[(slices + slice) * L + lane] = m.s2;
      __syncthreads();  // partials complete
      if (slice == 0 && active) {
        Moments total;
        for (int s = 0; s < slices; ++s) {
          total.s1 += partial[s * L + lane];
          total.s2 += partial[(slices + s) * L + lane];
        }
        acc_t mean, std_;
        finish_moments(total, HW, shift, prm.eps, &mean, &std_);
        if (prm.stats_out != nullptr) {
          prm.stats_out[r * 2 * C + c] = mean;
          prm.stats_out[r * 2 * C + C + c] = std_;
        }
        if (k == first) {
          lender[lane] = mean;
          lender[L + lane] = std_;
        }
      }
    }
    __syncthreads();  // as in the NCHW kernel
    if (!prm.normalize || !active) continue;
    const acc_t mean = prm.stats_in ? prm.stats_in[r * 2 * C + c] : acc_t(lender[lane]);
    const acc_t inv = acc_t(1) / (prm.stats_in ? prm.stats_in[r * 2 * C + C + c] : acc_t(lender[L + lane]));
    scalar_t* yr = y + r * HW * C;
    for (int64_t p = slice; p < HW; p += slices) yr[p * C + c] = from_acc<scalar_t>((to_acc(xr[p * C + c]) - mean) * inv);
  }
}

struct InstNormLaunch {
  int64_t blocks;
  int threads;
  size_t shared_bytes;
};

// NCHW: one block per (group, channel), 256 threads, or fewer (a multiple of 32) for small planes.
// NHWC: one block per (group, 32 channels), 256 threads = 32 channels x 8 pixel slices.
template <typename acc_t>
inline InstNormLaunch instnorm_launch_shape(const InstNormParams<acc_t>& prm, bool channels_last) {
  if (channels_last) {
    const int threads = 256, slices = threads / kInstNormLanes;
    const int64_t tiles = (prm.C + kInstNormLanes - 1) / kInstNormLanes;
    return {prm.groups * tiles, threads, size_t(2 * slices * kInstNormLanes + 2 * kInstNormLanes) * sizeof(double)};
  }
  int threads = 32;
  while (threads < 256 && threads < prm.HW) threads *= 2;
  return {prm.groups * prm.C, threads, size_t(2 * (threads / 32) + 2) * sizeof(double)};
}

}  // namespace cuda_kernels
}  // namespace gandid
