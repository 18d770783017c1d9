// The AVX2 build of the fused DAVIS counts kernel (boundary_impl.h), in pdnet::eval::avx2;
// boundary.cpp runs it when cpu_isa() is AVX2 or AVX512 (the builds: ../cpu/isa.h).
#include "../cpu/isa.h"
#if PDNET_X86_ISA_BUILDS

#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "boundary.h"

#define PDNET_ISA_BUILD_AVX2
#include "../cpu/isa_build.h"

namespace pdnet::eval::avx2 {
namespace {
#include "boundary_impl.h"
}  // namespace

void frame_block(const Args& a, int64_t t0, int64_t t1, uint64_t* scratch) {
  block(a, t0, t1, scratch);
}

}  // namespace pdnet::eval::avx2

PDNET_ISA_BUILD_END
#endif
