// Helpers shared by the op files and the kernels (host side only).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <sstream>
#include <string>

namespace pdnet::ops::detail {

// "[2, 5, 900, 32] Float on cpu": shape, dtype and device, for error messages.
std::string describe(const at::Tensor& t);

// t is a floating tensor of rank ndim (dims_doc names the dimensions, e.g. "(B, p, N, d)").
void check_float_rank(const char* where, const char* name, const at::Tensor& t, int64_t ndim, const char* dims_doc);

// t has the device (and, when same_dtype, the dtype) of ref.
void check_like(const char* where, const char* name, const at::Tensor& t, const char* ref_name, const at::Tensor& ref,
                bool same_dtype);

// The dispatcher's handle of the op `name` ("pdnet::<op>"), typed as the C++ API function Fn
// (ops.h); the API functions look it up once, into a static.
template <typename Fn>
c10::TypedOperatorHandle<Fn> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

}  // namespace pdnet::ops::detail
