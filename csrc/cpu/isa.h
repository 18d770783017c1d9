// Instruction-set builds of the vectorised CPU code, and the one choice among them that the
// op cores (ops/cpu/) and the evaluation kernel (eval/) share.
//
// Hot CPU code is compiled once per instruction set, each build in a source file of its own:
//   DEFAULT  the baseline flags of the extension;
//   AVX2     AVX2, FMA, F16C, POPCNT, BMI1, BMI2 (the x86-64-v3 level): 8 float lanes;
//   AVX512   the AVX2 set plus AVX-512 F, BW, VL, DQ: 16 float lanes.
// The AVX2 and AVX512 builds exist on x86-64 with GCC (PDNET_X86_ISA_BUILDS), which compiles
// them through `#pragma GCC target` (isa_build.h has the details). The evaluation kernel has
// DEFAULT and AVX2 builds; it runs its AVX2 build when AVX512 is chosen.
//
// cpu_isa() follows torch's own choice, at::get_cpu_capability(), which honours
// ATEN_CPU_CAPABILITY=default|avx2|avx512: AVX512 when torch chose AVX-512 and the processor
// has every feature of that build, else AVX2 when torch did not choose the baseline and the
// processor has the AVX2 set, else DEFAULT.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PDNET_X86_ISA_BUILDS 1
#else
#define PDNET_X86_ISA_BUILDS 0
#endif

namespace pdnet::cpu {

enum class Isa { kDefault, kAvx2, kAvx512 };

// The build this process runs (chosen once, see the file comment).
Isa cpu_isa();

// "DEFAULT", "AVX2" or "AVX512" (pdnet._C.cpu_isa() in Python).
const char* isa_name(Isa isa);

}  // namespace pdnet::cpu
