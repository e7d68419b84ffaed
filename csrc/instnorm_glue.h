// Torch glue of instance_norm shared by the extension and the CUDA emulation test: argument checks
// and the kernels' parameters, handed to a backend callback (as glue.h does for intervene_pixelnorm).
#pragma once
#include <torch/extension.h>

#include <optional>

#include "glue.h"
#include "instnorm.h"

namespace gandid {
namespace glue {

inline void check_in_aux(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x,
                         at::ScalarType dtype) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->device() == x.device(), "instance_norm: ", name, " is on ", t->device(), " but x is on ", x.device());
  TORCH_CHECK(t->scalar_type() == dtype, "instance_norm: ", name, " must be ", dtype, ", got ", t->scalar_type());
  TORCH_CHECK(t->is_contiguous(), "instance_norm: ", name, " must be contiguous");
}

// Calls run(const InstNormParams<acc_t>& prm, DType dtype, bool channels_last), acc_t = double for
// float64 x and float otherwise. stats_in / stats_out: (N, 2, C) contiguous in acc_t; y: x's shape,
// dtype and memory format (absent when !normalize); group_offsets / group_rows as in glue::prepare.
template <typename Run>
void prepare_instnorm(const at::Tensor& x, const std::optional<at::Tensor>& stats_in,
                      const std::optional<at::Tensor>& group_offsets, const std::optional<at::Tensor>& group_rows,
                      bool normalize, double eps, const std::optional<at::Tensor>& y,
                      const std::optional<at::Tensor>& stats_out, Run&& run) {
  TORCH_CHECK(x.dim() == 4, "instance_norm: x must be (N, C, H, W), got ", x.sizes());
  const bool channels_last = !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(x.is_contiguous() || channels_last, "instance_norm: x must be contiguous or channels_last");
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  TORCH_CHECK(!normalize || y.has_value(), "instance_norm: y is required to normalise");
  if (y.has_value())
    TORCH_CHECK(y->sizes() == x.sizes() && y->scalar_type() == x.scalar_type() && y->device() == x.device() &&
                    y->is_contiguous(fmt),
                "instance_norm: out must match x in shape, dtype, device and memory format");
  const DType dtype = dtype_of(x);
  const auto acc = dtype == DType::kDouble ? at::kDouble : at::kFloat;
  const std::vector<int64_t> stats_shape{x.size(0), 2, x.size(1)};
  check_in_aux(stats_in, "stats_in", x, acc);
  check_in_aux(stats_out, "stats_out", x, acc);
  TORCH_CHECK(!stats_in.has_value() || stats_in->sizes() == stats_shape, "instance_norm: stats_in must be ",
              stats_shape);
  TORCH_CHECK(!stats_out.has_value() || stats_out->sizes() == stats_shape, "instance_norm: stats_out must be ",
              stats_shape);
  TORCH_CHECK(group_offsets.has_value() == group_rows.has_value(),
              "instance_norm: group_offsets and group_rows come together");
  check_in_aux(group_offsets, "group_offsets", x, at::kLong);
  check_in_aux(group_rows, "group_rows", x, at::kLong);
  TORCH_CHECK(!group_rows.has_value() || (group_rows->numel() == x.size(0) && group_offsets->dim() == 1 &&
                                          group_offsets->numel() >= 2),
              "instance_norm: group_rows must list the ", x.size(0), " rows once, in groups");
  TORCH_CHECK(eps > 0, "instance_norm: eps must be positive");
  if (x.numel() == 0) return;
  auto fill = [&](auto& prm) {
    using acc_t = typename std::decay_t<decltype(prm)>::acc_type;
    prm.N = x.size(0);
    prm.C = x.size(1);
    prm.HW = x.size(2) * x.size(3);
    prm.stats_in = stats_in.has_value() ? stats_in->data_ptr<acc_t>() : nullptr;
    prm.stats_out = stats_out.has_value() ? stats_out->data_ptr<acc_t>() : nullptr;
    prm.group_offsets = group_offsets.has_value() ? group_offsets->data_ptr<int64_t>() : nullptr;
    prm.group_rows = group_rows.has_value() ? group_rows->data_ptr<int64_t>() : nullptr;
    prm.groups = group_offsets.has_value() ? group_offsets->size(0) - 1 : prm.N;
    prm.normalize = normalize;
    prm.eps = eps;
  };
  if (dtype == DType::kDouble) {
    InstNormParams<double> prm;
    fill(prm);
    run(prm, dtype, channels_last);
  } else {
    InstNormParams<float> prm;
    fill(prm);
    run(prm, dtype, channels_last);
  }
}

}  // namespace glue
}  // namespace gandid
