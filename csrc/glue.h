// Torch glue shared by the extension and the CUDA emulation test: argument checks and the kernels'
// parameters, handed to a backend callback.
#pragma once
#include <torch/extension.h>

#include <optional>

#include "dtype.h"
#include "intervene.h"

namespace gandid {
namespace glue {

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat;
    case at::kDouble: return DType::kDouble;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "intervene_pixelnorm: x must be float32, float64, float16 or bfloat16, got ",
                         t.scalar_type());
  }
}

template <typename acc_t>
const acc_t* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<acc_t>() : nullptr;
}

template <typename acc_t>
InterveneParams<acc_t> make_params(const at::Tensor& x, const std::optional<at::Tensor>& alpha,
                                   const std::optional<at::Tensor>& region, const std::optional<at::Tensor>& value,
                                   const std::optional<at::Tensor>& rows, const std::optional<at::Tensor>& beta_in,
                                   const std::optional<at::Tensor>& group_offsets,
                                   const std::optional<at::Tensor>& group_rows, bool normalize, double eps) {
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
  prm.group_offsets = ptr_or_null<int64_t>(group_offsets);
  prm.group_rows = ptr_or_null<int64_t>(group_rows);
  prm.groups = group_offsets.has_value() ? group_offsets->size(0) - 1 : prm.N;
  prm.normalize = normalize;
  prm.eps = static_cast<acc_t>(eps);
  return prm;
}

inline void check_aux(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x, at::ScalarType dtype) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->device() == x.device(), "intervene_pixelnorm: ", name, " is on ", t->device(), " but x is on ",
              x.device());
  TORCH_CHECK(t->scalar_type() == dtype, "intervene_pixelnorm: ", name, " must be ", dtype, ", got ",
              t->scalar_type());
  TORCH_CHECK(t->is_contiguous(), "intervene_pixelnorm: ", name, " must be contiguous");
}

// Checks the outputs and auxiliary tensors and calls run(const InterveneParams<acc_t>& prm, DType
// dtype, bool channels_last) with acc_t = double for float64 x and float for the rest. Auxiliary
// tensors are contiguous, on x's device, in the accumulation dtype; rows is bool. Row groups
// (gandid/ops/groups.py) are int64: group_offsets (G + 1,) into group_rows (N,), lender first; both
// absent when every row is its own group. Python checks shapes and beta_src's values.
template <typename Run>
void prepare(const at::Tensor& x, const std::optional<at::Tensor>& alpha, const std::optional<at::Tensor>& region,
             const std::optional<at::Tensor>& value, const std::optional<at::Tensor>& rows,
             const std::optional<at::Tensor>& group_offsets, const std::optional<at::Tensor>& group_rows,
             const std::optional<at::Tensor>& beta_in, bool normalize, double eps, const at::Tensor& y,
             const at::Tensor& beta_out, Run&& run) {
  TORCH_CHECK(x.dim() == 4, "intervene_pixelnorm: x must be (N, C, H, W), got ", x.sizes());
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

  TORCH_CHECK(group_offsets.has_value() == group_rows.has_value(),
              "intervene_pixelnorm: group_offsets and group_rows come together");
  check_aux(group_offsets, "group_offsets", x, at::kLong);
  check_aux(group_rows, "group_rows", x, at::kLong);
  TORCH_CHECK(!group_rows.has_value() || (group_rows->numel() == x.size(0) && group_offsets->dim() == 1 &&
                                          group_offsets->numel() >= 2),
              "intervene_pixelnorm: group_rows must list the ", x.size(0), " rows once, in groups");
  if (dtype == DType::kDouble)
    run(make_params<double>(x, alpha, region, value, rows, beta_in, group_offsets, group_rows, normalize, eps),
        dtype, channels_last);
  else
    run(make_params<float>(x, alpha, region, value, rows, beta_in, group_offsets, group_rows, normalize, eps),
        dtype, channels_last);
}

}  // namespace glue
}  // namespace gandid
