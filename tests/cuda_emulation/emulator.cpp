// Runs gandid's CUDA kernels (csrc/cuda/intervene_kernels.cuh) on the host, for machines without a
// GPU. The kernels are compiled by the host compiler as plain functions; this file supplies the
// CUDA built-ins they use (threadIdx, blockIdx, blockDim, __shfl_xor_sync) and a launcher that
// runs the production grid (launch_shape) warp by warp. The 32 lanes of a warp are user-level
// contexts (ucontext) on one OS thread: each lane runs until its next warp shuffle, and the
// shuffle's values are exchanged once all 32 lanes have reached it, as in lockstep hardware.
// Lanes that diverge at a shuffle (some finished, some waiting) are reported as an error.
//
// What this checks: the kernels' indexing, row groups, β borrowing, masks, dtype conversions and
// the launch shape, against the same float64 loop as every other backend. What it cannot check:
// the CUDA runtime, memory coalescing, speed and the torch-side glue of cuda_glue.cpp.
#include <ucontext.h>
#include <vector_types.h>

#include <array>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

// The CUDA built-ins of the lane that is running (one OS thread: the scheduler sets them before
// resuming a lane).
uint3 threadIdx{0, 0, 0};
uint3 blockIdx{0, 0, 0};
dim3 blockDim{1, 1, 1};

namespace emu {

constexpr int kWarp = 32;
constexpr size_t kStack = 256 * 1024;

enum class LaneState { kRunning, kAtShuffle, kDone };

struct Warp {
  ucontext_t scheduler;
  std::array<ucontext_t, kWarp> lanes;
  std::array<std::vector<char>, kWarp> stacks;
  std::array<LaneState, kWarp> state;
  std::array<double, kWarp> posted, exchanged;  // values at the current shuffle
  std::array<unsigned, kWarp> masks;
  int current = 0;
  const std::function<void()>* body = nullptr;
};

Warp& warp() {
  static Warp w;
  return w;
}

struct Counters {
  int64_t blocks = 0, threads = 0, warps = 0, shuffles = 0;
};
Counters counters;

void lane_main() {
  Warp& w = warp();
  (*w.body)();
  w.state[w.current] = LaneState::kDone;
  // returning resumes uc_link, the scheduler
}

// Runs body once per thread of a grid of `blocks` x `threads` (threads a multiple of 32).
void launch(int64_t blocks, int threads, const std::function<void()>& body) {
  if (threads % kWarp != 0) throw std::invalid_argument("emulator: threads per block must be a multiple of 32");
  Warp& w = warp();
  w.body = &body;
  blockDim = dim3(threads, 1, 1);
  counters = {blocks, threads, 0, 0};
  const int64_t warps = blocks * (threads / kWarp);
  for (int64_t wi = 0; wi < warps; ++wi) {
    const int64_t first_thread = wi * kWarp;
    for (int lane = 0; lane < kWarp; ++lane) {
      w.stacks[lane].resize(kStack);
      getcontext(&w.lanes[lane]);
      w.lanes[lane].uc_stack.ss_sp = w.stacks[lane].data();
      w.lanes[lane].uc_stack.ss_size = kStack;
      w.lanes[lane].uc_link = &w.scheduler;
      makecontext(&w.lanes[lane], lane_main, 0);
      w.state[lane] = LaneState::kRunning;
    }
    while (true) {
      for (int lane = 0; lane < kWarp; ++lane) {
        if (w.state[lane] == LaneState::kDone) continue;
        w.state[lane] = LaneState::kRunning;
        w.current = lane;
        blockIdx = uint3{static_cast<unsigned>((first_thread + lane) / threads), 0, 0};
        threadIdx = uint3{static_cast<unsigned>((first_thread + lane) % threads), 0, 0};
        swapcontext(&w.scheduler, &w.lanes[lane]);
      }
      int done = 0, waiting = 0;
      for (int lane = 0; lane < kWarp; ++lane) {
        done += w.state[lane] == LaneState::kDone;
        waiting += w.state[lane] == LaneState::kAtShuffle;
      }
      if (done == kWarp) break;
      if (waiting != kWarp)
        throw std::runtime_error("emulator: lanes of warp " + std::to_string(wi) + " diverged at a shuffle (" +
                                 std::to_string(waiting) + " waiting, " + std::to_string(done) + " finished)");
      for (int lane = 0; lane < kWarp; ++lane)
        if (w.masks[lane] != 0xffffffffu) throw std::runtime_error("emulator: a shuffle with a partial lane mask");
      w.exchanged = w.posted;
      ++counters.shuffles;
    }
    ++counters.warps;
  }
}

template <typename T>
T shfl_xor(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(double), "emulator: shuffles of up to 8 bytes");
  Warp& w = warp();
  const int lane = w.current;
  w.posted[lane] = static_cast<double>(value);
  w.masks[lane] = mask;
  w.state[lane] = LaneState::kAtShuffle;
  swapcontext(&w.lanes[lane], &w.scheduler);  // back here once every lane has posted its value
  return static_cast<T>(w.exchanged[lane ^ lane_mask]);
}

}  // namespace emu

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  (void)width;
  return emu::shfl_xor(mask, value, lane_mask);
}

#include "cuda/intervene_kernels.cuh"
#include "glue.h"

namespace gandid {
namespace {

template <typename scalar_t, typename acc_t>
void run_kernels(const InterveneParams<acc_t>& prm, bool channels_last, const at::Tensor& x, at::Tensor& y,
                 at::Tensor& beta_out) {
  const auto shape = cuda_kernels::launch_shape(prm, channels_last);
  const auto* xs = reinterpret_cast<const scalar_t*>(x.data_ptr());
  auto* ys = reinterpret_cast<scalar_t*>(y.data_ptr());
  auto* bs = reinterpret_cast<scalar_t*>(beta_out.data_ptr());
  const std::function<void()> body = [&] {
    if (channels_last)
      cuda_kernels::nhwc_kernel<scalar_t, acc_t>(prm, xs, ys, bs);
    else
      cuda_kernels::nchw_kernel<scalar_t, acc_t>(prm, xs, ys, bs);
  };
  emu::launch(shape.blocks, shape.threads, body);
}

// Same signature and checks as the extension's forward_out, for CPU tensors, run by the CUDA
// kernels under emulation. c10::Half / c10::BFloat16 share their bit layout with __half /
// __nv_bfloat16.
void forward_out(const at::Tensor& x, const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& region,
                 const std::optional<at::Tensor>& value, const std::optional<at::Tensor>& rows,
                 const std::optional<at::Tensor>& beta_src, const std::optional<at::Tensor>& beta_in, bool normalize,
                 double eps, at::Tensor y, at::Tensor beta_out) {
  TORCH_CHECK(x.device().is_cpu(), "emulator: CPU tensors only");
  glue::prepare(x, alpha, region, value, rows, beta_src, beta_in, normalize, eps, y, beta_out,
                [&](const auto& prm, DType dtype, bool channels_last) {
                  using acc_t = typename std::decay_t<decltype(prm)>::acc_type;
                  if constexpr (std::is_same_v<acc_t, double>) {
                    run_kernels<double, double>(prm, channels_last, x, y, beta_out);
                  } else {
                    switch (dtype) {
                      case DType::kFloat: return run_kernels<float, float>(prm, channels_last, x, y, beta_out);
                      case DType::kHalf: return run_kernels<__half, float>(prm, channels_last, x, y, beta_out);
                      case DType::kBFloat16:
                        return run_kernels<__nv_bfloat16, float>(prm, channels_last, x, y, beta_out);
                      default: TORCH_CHECK(false, "emulator: unexpected dtype");
                    }
                  }
                });
}

at::Tensor empty_like(const at::Tensor& x) {
  const bool channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  return at::empty_like(x, channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
}

}  // namespace
}  // namespace gandid

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gandid's CUDA kernels run on the host under an emulation of the CUDA thread model (tests only)";
  m.def("forward_out", &gandid::forward_out, "intervene + pixel norm by the CUDA kernels, emulated");
  m.def("empty_like", &gandid::empty_like, "uninitialised output like x");
  m.def("with_cuda", [] { return false; }, "no real CUDA here");
  m.def("last_launch", [] {
    const auto& c = emu::counters;
    return std::make_tuple(c.blocks, c.threads, c.warps, c.shuffles);
  }, "(blocks, threads per block, warps run, warp-wide shuffles) of the last emulated launch");
}
