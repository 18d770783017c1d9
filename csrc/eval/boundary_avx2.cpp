// The AVX2 + POPCNT build of the fused DAVIS counts kernel (boundary_impl.h), x86-64 with
// GCC only; elsewhere avx2::available() is false and the baseline build runs.
//
// setuptools compiles every source with the same flags, so the ISA is raised with
// `#pragma GCC target` for this file only, after the standard headers (their inline
// functions keep the baseline ISA); the code compiled for AVX2 lives in
// pdnet::eval::avx2 only.
#include <cstdint>
#include <cstring>
#include <utility>

#include "boundary.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)

#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,popcnt,bmi,bmi2")
#define PDNET_EVAL_AVX2 1

namespace pdnet::eval::avx2 {
namespace {
#include "boundary_impl.h"
}  // namespace

bool available() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
}

void frame_block(const Args& a, int64_t t0, int64_t t1, uint64_t* scratch) {
  block(a, t0, t1, scratch);
}

}  // namespace pdnet::eval::avx2

#pragma GCC pop_options

#else

namespace pdnet::eval::avx2 {
bool available() {
  return false;
}
void frame_block(const Args&, int64_t, int64_t, uint64_t*) {}
}  // namespace pdnet::eval::avx2

#endif
