// The AVX2 + FMA build of the vectorised CPU cores (see isa.h), x86-64 with GCC only;
// elsewhere table_AVX2() returns nullptr and the DEFAULT build runs.
//
// setuptools compiles every source of an extension with the same flags, so the ISA
// is raised with `#pragma GCC target` for this file only. The standard and c10
// headers are included before the pragma so that the inline functions they define
// keep the baseline ISA (they may be merged with copies from other files); the code
// compiled for AVX2 lives in the at::vec::AVX2 and pdnet::cpu::AVX2 namespaces only.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <type_traits>

#include <ATen/NumericUtils.h>
#include <ATen/native/Math.h>
#include <ATen/native/cpu/zmath.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/TypeCast.h>
#include <c10/util/complex.h>
#include <c10/util/irange.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
// GCC's target pragma does not define the ISA macros that sleef.h and at::vec test
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "isa_impl.h"
#pragma GCC pop_options

#else

#include "isa.h"

namespace pdnet::cpu {
const KernelTable* table_AVX2() {
  return nullptr;
}
}  // namespace pdnet::cpu

#endif
