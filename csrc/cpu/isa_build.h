// The instruction-set part of one build of vectorised CPU code (the builds: isa.h).
//
// A build's source file defines one of PDNET_ISA_BUILD_DEFAULT, PDNET_ISA_BUILD_AVX2 or
// PDNET_ISA_BUILD_AVX512, includes this header, then the code to compile, and ends with
// PDNET_ISA_BUILD_END. The header defines CPU_CAPABILITY (DEFAULT, AVX2 or AVX512) and
// CPU_CAPABILITY_<ISA>, so that at::vec and the op cores compile into that build's inline
// namespace.
//
// setuptools compiles every source of an extension with the same flags, so the AVX2 and AVX512
// builds raise the instruction set with `#pragma GCC target` for the rest of their file, up to
// PDNET_ISA_BUILD_END. The standard, c10 and ATen headers are included before the pragma, so
// that the inline functions they define keep the baseline instruction set (the linker may merge
// them with the copies of other files); the code compiled for AVX2 or AVX-512 lives in the
// build's own namespaces only. GCC's target pragma does not define the instruction-set macros
// (__AVX2__, ...) that sleef.h and at::vec test, so the header defines them.
//
// Include it once per file, before any other header of code that is to be compiled for the
// build's instruction set.
#pragma once

#include "isa.h"

#if defined(PDNET_ISA_BUILD_DEFAULT)

#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#define PDNET_ISA_BUILD_END

#elif defined(PDNET_ISA_BUILD_AVX2) || defined(PDNET_ISA_BUILD_AVX512)

#if !PDNET_X86_ISA_BUILDS
#error "the AVX2 and AVX512 builds need x86-64 and GCC (PDNET_X86_ISA_BUILDS)"
#endif

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

// The feature lists below are those that processor_supports() (isa.cpp) checks at run time.
#pragma GCC push_options
#if defined(PDNET_ISA_BUILD_AVX512)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,popcnt,bmi,bmi2")
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#else
#pragma GCC target("avx2,fma,f16c,popcnt,bmi,bmi2")
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
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
#define PDNET_ISA_BUILD_END _Pragma("GCC pop_options")

#else
#error "define PDNET_ISA_BUILD_DEFAULT, PDNET_ISA_BUILD_AVX2 or PDNET_ISA_BUILD_AVX512 before including isa_build.h"
#endif
