#include "isa.h"

#include <ATen/Version.h>

#include <algorithm>
#include <cctype>
#include <string>

namespace pdnet::cpu {
namespace {

#if PDNET_X86_ISA_BUILDS
// The processor has every feature that the build's target pragma (isa_build.h) enables.
bool processor_supports(Isa isa) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
                    __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
  if (isa != Isa::kAvx512) return avx2;
  return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

Isa choose() {
#if PDNET_X86_ISA_BUILDS
  // torch's choice: "default", "avx2", "avx512", ... (lower-cased)
  std::string cap = at::get_cpu_capability();
  std::transform(cap.begin(), cap.end(), cap.begin(), [](unsigned char c) { return std::tolower(c); });
  if (cap.find("avx512") != std::string::npos && processor_supports(Isa::kAvx512)) return Isa::kAvx512;
  if (cap.find("default") == std::string::npos && processor_supports(Isa::kAvx2)) return Isa::kAvx2;
#endif
  return Isa::kDefault;
}

}  // namespace

Isa cpu_isa() {
  static const Isa isa = choose();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2:
      return "AVX2";
    case Isa::kAvx512:
      return "AVX512";
    default:
      return "DEFAULT";
  }
}

}  // namespace pdnet::cpu
