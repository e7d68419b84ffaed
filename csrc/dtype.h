#pragma once
namespace gandid {
// Element type of x / y / beta, passed across the torch-free kernel boundary.
enum class DType { kFloat, kDouble, kHalf, kBFloat16 };
}  // namespace gandid
