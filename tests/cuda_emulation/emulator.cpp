// Runs gandid's CUDA kernels (csrc/cuda/intervene_kernels.cuh) on the host, for machines without a
// GPU. The kernels are compiled by the host compiler as plain functions; this file supplies the
// CUDA built-ins they use (threadIdx, blockIdx, blockDim, __shfl_xor_sync, __syncthreads, dynamic
// shared memory) and a launcher that runs the production grid (launch_shape) block by block. The
// threads of a block are user-level contexts (ucontext) on one OS thread: each runs until its next
// warp shuffle or barrier, a shuffle's values are exchanged once all 32 lanes of the warp have
// reached it, and a barrier opens once every thread of the block has reached it, as on hardware.
// Between two meeting points the threads run in a fresh random order every round, so a missing
// barrier (one thread reading shared memory another has not written yet) shows up as wrong output.
// Threads that cannot all meet (lanes diverging at a shuffle, a barrier some threads skip) are
// reported as errors instead of hanging.
//
// What this checks: the kernels' indexing, row groups, β borrowing, masks, dtype conversions,
// shared-memory layout and the launch shape, against the same float64 loop as every other backend.
// What it cannot check: the CUDA runtime, memory coalescing, speed and cuda_glue.cpp.
#include <ucontext.h>
#include <vector_types.h>

#include <cstring>
#include <algorithm>
#include <functional>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

// The CUDA built-ins of the thread that is running (one OS thread: the scheduler sets them before
// resuming a thread).
uint3 threadIdx{0, 0, 0};
uint3 blockIdx{0, 0, 0};
dim3 blockDim{1, 1, 1};

namespace gandid {
namespace cuda_kernels {
// The dynamic shared memory the kernels declare (extern __shared__): one block runs at a time.
alignas(16) unsigned char gandid_smem[96 * 1024];
}  // namespace cuda_kernels
}  // namespace gandid

namespace emu {

constexpr int kWarp = 32;
constexpr size_t kStack = 64 * 1024;

enum class State { kRunning, kAtShuffle, kAtBarrier, kDone };

struct Block {
  ucontext_t scheduler;
  std::vector<ucontext_t> threads;
  std::vector<std::vector<char>> stacks;
  std::vector<State> state;
  std::vector<double> posted, exchanged;  // values at the current shuffle, per thread
  std::vector<unsigned> masks;
  int current = 0;
  const std::function<void()>* body = nullptr;
};

Block& block() {
  static Block b;
  return b;
}

struct Counters {
  int64_t blocks = 0, threads = 0, shared_bytes = 0, pixels = 0, lanes = 0, shuffles = 0, barriers = 0;
};
Counters counters;

void thread_main() {
  Block& b = block();
  (*b.body)();
  b.state[b.current] = State::kDone;  // returning resumes uc_link, the scheduler
}

void fail(int64_t block_index, const std::string& what) {
  throw std::runtime_error("emulator: block " + std::to_string(block_index) + ": " + what);
}

// Runs body once per thread of a grid of `blocks` x `threads` (a multiple of 32), one block at a
// time, with `shared_bytes` of dynamic shared memory.
void launch(int64_t blocks, int threads, size_t shared_bytes, const std::function<void()>& body) {
  if (threads % kWarp != 0) throw std::invalid_argument("emulator: threads per block must be a multiple of 32");
  if (shared_bytes > sizeof(gandid::cuda_kernels::gandid_smem))
    throw std::invalid_argument("emulator: the launch asks for more shared memory than the emulator has");
  Block& b = block();
  b.body = &body;
  b.threads.resize(threads);
  b.stacks.resize(threads);
  b.state.assign(threads, State::kRunning);
  b.posted.assign(threads, 0);
  b.exchanged.assign(threads, 0);
  b.masks.assign(threads, 0);
  blockDim = dim3(threads, 1, 1);
  counters.blocks = blocks;
  counters.threads = threads;
  counters.shared_bytes = static_cast<int64_t>(shared_bytes);
  counters.shuffles = counters.barriers = 0;
  std::vector<int> order(threads);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(12345);
  for (int64_t bi = 0; bi < blocks; ++bi) {
    // Garbage in shared memory, as on hardware: a kernel must not read what it did not write.
    std::memset(gandid::cuda_kernels::gandid_smem, 0x7f, shared_bytes);
    for (int t = 0; t < threads; ++t) {
      b.stacks[t].resize(kStack);
      getcontext(&b.threads[t]);
      b.threads[t].uc_stack.ss_sp = b.stacks[t].data();
      b.threads[t].uc_stack.ss_size = kStack;
      b.threads[t].uc_link = &b.scheduler;
      makecontext(&b.threads[t], thread_main, 0);
      b.state[t] = State::kRunning;
    }
    while (true) {
      std::shuffle(order.begin(), order.end(), rng);
      for (const int t : order) {
        if (b.state[t] != State::kRunning) continue;
        b.current = t;
        blockIdx = uint3{static_cast<unsigned>(bi), 0, 0};
        threadIdx = uint3{static_cast<unsigned>(t), 0, 0};
        swapcontext(&b.scheduler, &b.threads[t]);
      }
      int done = 0, at_barrier = 0;
      bool released = false;
      for (int t = 0; t < threads; ++t) {
        done += b.state[t] == State::kDone;
        at_barrier += b.state[t] == State::kAtBarrier;
      }
      if (done == threads) break;
      for (int w = 0; w < threads / kWarp; ++w) {
        int waiting = 0;
        for (int t = w * kWarp; t < (w + 1) * kWarp; ++t) waiting += b.state[t] == State::kAtShuffle;
        if (waiting == 0) continue;
        if (waiting != kWarp) {
          bool blocked = true;  // the other lanes cannot reach the shuffle any more
          for (int t = w * kWarp; t < (w + 1) * kWarp; ++t) blocked &= b.state[t] != State::kRunning;
          if (blocked) fail(bi, "lanes of warp " + std::to_string(w) + " diverged at a shuffle");
          continue;
        }
        for (int t = w * kWarp; t < (w + 1) * kWarp; ++t) {
          if (b.masks[t] != 0xffffffffu) fail(bi, "a shuffle with a partial lane mask");
          b.exchanged[t] = b.posted[t];
          b.state[t] = State::kRunning;
        }
        ++counters.shuffles;
        released = true;
      }
      if (released) continue;
      if (at_barrier == threads) {
        for (int t = 0; t < threads; ++t) b.state[t] = State::kRunning;
        ++counters.barriers;
        continue;
      }
      fail(bi, std::to_string(at_barrier) + " threads wait at __syncthreads, " + std::to_string(done) +
                   " have finished: they can never all meet");
    }
  }
}

void wait(State why) {
  Block& b = block();
  b.state[b.current] = why;
  swapcontext(&b.threads[b.current], &b.scheduler);
}

template <typename T>
T shfl_xor(unsigned mask, T value, int lane_mask) {
  static_assert(sizeof(T) <= sizeof(double), "emulator: shuffles of up to 8 bytes");
  Block& b = block();
  const int t = b.current;
  b.posted[t] = static_cast<double>(value);
  b.masks[t] = mask;
  wait(State::kAtShuffle);  // back here once every lane of the warp has posted its value
  const int warp_base = t - t % kWarp;
  return static_cast<T>(b.exchanged[warp_base + ((t % kWarp) ^ lane_mask)]);
}

}  // namespace emu

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  (void)width;
  return emu::shfl_xor(mask, value, lane_mask);
}

void __syncthreads() { emu::wait(emu::State::kAtBarrier); }

#include "cuda/intervene_kernels.cuh"
#include "glue.h"

namespace gandid {
namespace {

template <typename scalar_t, typename acc_t>
void run_kernels(const InterveneParams<acc_t>& prm, bool channels_last, const at::Tensor& x, at::Tensor& y,
                 at::Tensor& beta_out) {
  const auto shape = cuda_kernels::launch_shape<scalar_t>(prm, channels_last);
  const auto* xs = reinterpret_cast<const scalar_t*>(x.data_ptr());
  auto* ys = reinterpret_cast<scalar_t*>(y.data_ptr());
  auto* bs = reinterpret_cast<scalar_t*>(beta_out.data_ptr());
  const std::function<void()> body = [&] {
    if (channels_last)
      cuda_kernels::nhwc_kernel<scalar_t, acc_t>(prm, xs, ys, bs, shape.nhwc_lanes);
    else
      cuda_kernels::nchw_kernel<scalar_t, acc_t>(prm, xs, ys, bs, shape.nchw);
  };
  emu::counters.pixels = shape.nchw.pixels;
  emu::counters.lanes = shape.nhwc_lanes;
  emu::launch(shape.blocks, shape.threads, shape.shared_bytes, body);
}

// Same signature and checks as the extension's forward_out, for CPU tensors, run by the CUDA
// kernels under emulation. c10::Half / c10::BFloat16 share their bit layout with __half /
// __nv_bfloat16.
void forward_out(const at::Tensor& x, const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& region,
                 const std::optional<at::Tensor>& value, const std::optional<at::Tensor>& rows,
                 const std::optional<at::Tensor>& group_offsets, const std::optional<at::Tensor>& group_rows,
                 const std::optional<at::Tensor>& beta_in, bool normalize, double eps, at::Tensor y,
                 at::Tensor beta_out) {
  TORCH_CHECK(x.device().is_cpu(), "emulator: CPU tensors only");
  glue::prepare(x, alpha, region, value, rows, group_offsets, group_rows, beta_in, normalize, eps, y, beta_out,
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
  using namespace pybind11::literals;
  m.doc() = "gandid's CUDA kernels run on the host under an emulation of the CUDA thread model (tests only)";
  m.def("forward_out", &gandid::forward_out, "intervene + pixel norm by the CUDA kernels, emulated");
  m.def("empty_like", &gandid::empty_like, "uninitialised output like x");
  m.def("with_cuda", [] { return false; }, "no real CUDA here");
  m.def("last_launch", [] {
    const auto& c = emu::counters;
    return pybind11::dict("blocks"_a = c.blocks, "threads"_a = c.threads, "shared_bytes"_a = c.shared_bytes,
                          "pixels_per_block"_a = c.pixels, "lanes_per_pixel"_a = c.lanes,
                          "shuffles"_a = c.shuffles, "barriers"_a = c.barriers);
  }, "the last emulated launch: grid, shared memory, NCHW pixels per block, NHWC lanes per pixel, "
     "warp shuffles and barriers run");
}
