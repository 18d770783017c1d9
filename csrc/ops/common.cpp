#include "common.h"

#include "ops.h"

namespace pdnet::ops::detail {

std::string describe(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes() << " " << t.scalar_type() << " on " << t.device();
  return s.str();
}

void check_float_rank(const char* where, const char* name, const at::Tensor& t, int64_t ndim, const char* dims_doc) {
  TORCH_CHECK(t.defined(), where, ": ", name, " is undefined");
  TORCH_CHECK(t.dim() == ndim, where, ": ", name, " must have ", ndim, " dims ", dims_doc, ", got ", describe(t));
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), where, ": ", name, " must be a floating-point tensor, got ",
              describe(t));
}

void check_like(const char* where, const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref,
                bool same_dtype) {
  TORCH_CHECK(t.device() == ref.device(), where, ": ", name, " ", describe(t), " and ", ref_name, " ", describe(ref),
              " must be on the same device");
  TORCH_CHECK(!same_dtype || t.scalar_type() == ref.scalar_type(), where, ": ", name, " ", describe(t), " and ",
              ref_name, " ", describe(ref), " must have the same dtype");
}

void check_same_shape(const char* where, const char* name, const at::Tensor& t, const char* ref_name,
                      const at::Tensor& ref) {
  TORCH_CHECK(t.sizes() == ref.sizes(), where, ": ", name, " must have the shape of ", ref_name, " ", ref.sizes(),
              ", got ", describe(t));
}

at::ScalarType opmath_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace pdnet::ops::detail
