// Torch glue of intervene_pixelnorm: checks, row groups from beta_src, dtype and device dispatch.
// Python (gandid/ops) allocates the outputs and registers the op with torch.library.
#include <torch/extension.h>

#include <sys/mman.h>

#include <cstdlib>
#include <optional>
#include <vector>

#include "cpu/intervene_cpu.h"
#include "dtype.h"
#include "intervene.h"

namespace gandid {

#ifdef GANDID_WITH_CUDA
void forward_cuda(const InterveneParams<float>* pf, const InterveneParams<double>* pd, DType dtype,
                  bool channels_last, const at::Tensor& x, at::Tensor& y, at::Tensor& beta_out);
#endif

bool with_cuda() {
#ifdef GANDID_WITH_CUDA
  return true;
#else
  return false;
#endif
}

namespace {

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "intervene_pixelnorm: x must be float32, float64, float16 or bfloat16, got ",
                         t.scalar_type());
  }
}

// Rows grouped as [lender, its borrowers...] for every lender; each row appears exactly once.
std::pair<at::Tensor, at::Tensor> row_groups(const std::optional<at::Tensor>& beta_src, int64_t N, bool borrow) {
  auto opts = at::TensorOptions().dtype(at::kLong);
  if (!borrow || !beta_src.has_value()) {
    return {at::arange(N + 1, opts), at::arange(N, opts)};
  }
  const at::Tensor src = beta_src->to(at::kCPU, at::kLong).contiguous();
  const int64_t* s = src.data_ptr<int64_t>();
  std::vector<std::vector<int64_t>> borrowers(N);
  for (int64_t n = 0; n < N; ++n) {
    TORCH_CHECK(s[n] >= 0 && s[n] < N, "intervene_pixelnorm: beta_src[", n, "] = ", s[n], " is not a row in [0, ",
                N, ")");
    if (s[n] != n) {
      TORCH_CHECK(s[s[n]] == s[n], "intervene_pixelnorm: beta_src chains are refused: row ", n, " borrows from row ",
                  s[n], ", which itself borrows from row ", s[s[n]]);
      borrowers[s[n]].push_back(n);
    }
  }
  std::vector<int64_t> offsets{0}, rows;
  rows.reserve(N);
  for (int64_t n = 0; n < N; ++n) {
    if (s[n] != n) continue;
    rows.push_back(n);
    rows.insert(rows.end(), borrowers[n].begin(), borrowers[n].end());
    offsets.push_back(static_cast<int64_t>(rows.size()));
  }
  return {at::tensor(offsets, opts), at::tensor(rows, opts)};
}

template <typename acc_t>
const acc_t* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<acc_t>() : nullptr;
}

template <typename acc_t>
InterveneParams<acc_t> make_params(const at::Tensor& x, const std::optional<at::Tensor>& alpha,
                                   const std::optional<at::Tensor>& region, const std::optional<at::Tensor>& value,
                                   const std::optional<at::Tensor>& rows, const std::optional<at::Tensor>& beta_in,
                                   const at::Tensor& offsets, const at::Tensor& grouped, bool normalize, double eps) {
  InterveneParams<acc_t> prm;
  prm.N = x.size(0);
  prm.C = x.size(1);
  prm.HW = x.size(2) * x.size(3);
  prm.alpha = ptr_or_null<acc_t>(alpha);
  prm.value = ptr_or_null<acc_t>(value);
  prm.region = ptr_or_null<acc_t>(region);
  prm.region_rows = region.has_value() ? region->size(0) : 1;
  prm.rows = rows.has_value() ? reinterpret_cast<const uint8_t*>(rows->data_ptr<bool>()) : nullptr;
  prm.beta_in = ptr_or_null<acc_t>(beta_in);
  prm.group_offsets = offsets.data_ptr<int64_t>();
  prm.group_rows = grouped.data_ptr<int64_t>();
  prm.groups = offsets.size(0) - 1;
  prm.normalize = normalize;
  prm.eps = static_cast<acc_t>(eps);
  return prm;
}

void check_aux(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x, at::ScalarType dtype) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->device() == x.device(), "intervene_pixelnorm: ", name, " is on ", t->device(), " but x is on ",
              x.device());
  TORCH_CHECK(t->scalar_type() == dtype, "intervene_pixelnorm: ", name, " must be ", dtype, ", got ",
              t->scalar_type());
  TORCH_CHECK(t->is_contiguous(), "intervene_pixelnorm: ", name, " must be contiguous");
}

}  // namespace

// Writes y (x's shape and memory format) and beta_out ((N, 1, H, W) contiguous, x's dtype).
// Auxiliary tensors are contiguous, on x's device, in the accumulation dtype (float64 for
// float64 x, float32 otherwise); rows is bool; beta_src is int64. Python checks shapes.
void forward_out(const at::Tensor& x, const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& region,
                 const std::optional<at::Tensor>& value, const std::optional<at::Tensor>& rows,
                 const std::optional<at::Tensor>& beta_src, const std::optional<at::Tensor>& beta_in, bool normalize,
                 double eps, at::Tensor y, at::Tensor beta_out) {
  TORCH_CHECK(x.dim() == 4, "intervene_pixelnorm: x must be (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(!x.is_cuda() || with_cuda(), "intervene_pixelnorm: this build of the extension has no CUDA support");
  const bool channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(x.is_contiguous() || channels_last, "intervene_pixelnorm: x must be contiguous or channels_last");
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  TORCH_CHECK(y.sizes() == x.sizes() && y.scalar_type() == x.scalar_type() && y.device() == x.device() &&
                  y.is_contiguous(fmt),
              "intervene_pixelnorm: out must match x in shape, dtype, device and memory format");
  TORCH_CHECK(beta_out.numel() == x.size(0) * x.size(2) * x.size(3) && beta_out.is_contiguous() &&
                  beta_out.scalar_type() == x.scalar_type() && beta_out.device() == x.device(),
              "intervene_pixelnorm: beta_out must be a contiguous (N, 1, H, W) tensor of x's dtype and device");
  const DType dtype = dtype_of(x);
  const auto acc = dtype == DType::kDouble ? at::kDouble : at::kFloat;
  check_aux(alpha, "alpha", x, acc);
  check_aux(value, "value", x, acc);
  check_aux(region, "region", x, acc);
  check_aux(beta_in, "beta_in", x, acc);
  check_aux(rows, "rows", x, at::kBool);
  if (x.numel() == 0) return;

  auto [offsets, grouped] = row_groups(beta_src, x.size(0), normalize && !beta_in.has_value());
  offsets = offsets.to(x.device());
  grouped = grouped.to(x.device());
  if (dtype == DType::kDouble) {
    auto prm = make_params<double>(x, alpha, region, value, rows, beta_in, offsets, grouped, normalize, eps);
    if (x.is_cuda()) {
#ifdef GANDID_WITH_CUDA
      forward_cuda(nullptr, &prm, dtype, channels_last, x, y, beta_out);
#endif
    } else {
      intervene_pixelnorm_cpu(prm, dtype, channels_last, x.data_ptr(), y.data_ptr(), beta_out.data_ptr());
    }
  } else {
    auto prm = make_params<float>(x, alpha, region, value, rows, beta_in, offsets, grouped, normalize, eps);
    if (x.is_cuda()) {
#ifdef GANDID_WITH_CUDA
      forward_cuda(&prm, nullptr, dtype, channels_last, x, y, beta_out);
#endif
    } else {
      intervene_pixelnorm_cpu(prm, dtype, channels_last, x.data_ptr(), y.data_ptr(), beta_out.data_ptr());
    }
  }
}

// An uninitialised tensor like x (same memory format). Large CPU outputs are backed by transparent
// huge pages: a fresh allocation then faults 2 MiB at a time instead of 4 KiB, which is most of the
// cost of writing into new memory on Linux (clone() of 128 MB runs at a third of copy_ here).
at::Tensor empty_like_fast(const at::Tensor& x) {
  const bool channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t nbytes = static_cast<size_t>(x.numel()) * x.element_size();
  if (!x.device().is_cpu() || nbytes < 4 * kHuge) return at::empty_like(x, fmt);
  const size_t size = (nbytes + kHuge - 1) / kHuge * kHuge;
  void* ptr = nullptr;
  if (posix_memalign(&ptr, kHuge, size) != 0) return at::empty_like(x, fmt);
#ifdef MADV_HUGEPAGE
  madvise(ptr, size, MADV_HUGEPAGE);  // advice only: without THP this is an ordinary allocation
#endif
  std::vector<int64_t> strides(x.dim(), 1);
  if (channels_last) {
    strides = c10::get_channels_last_strides_2d(x.sizes());
  } else {
    for (int64_t d = x.dim() - 2; d >= 0; --d) strides[d] = strides[d + 1] * x.size(d + 1);
  }
  return at::from_blob(ptr, x.sizes(), strides, [](void* p) { free(p); }, x.options());
}

}  // namespace gandid

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gandid fused op intervene_pixelnorm (CPU, and CUDA when built with it)";
  m.def("forward_out", &gandid::forward_out, "intervene + pixel norm into preallocated outputs");
  m.def("with_cuda", &gandid::with_cuda, "whether this build has CUDA kernels");
  m.def("empty_like", &gandid::empty_like_fast, "uninitialised output like x (huge pages for large CPU tensors)");
}
