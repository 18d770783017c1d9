// The DEFAULT (baseline instruction set) build of the vectorised CPU cores, and the
// runtime choice among it and the AVX2 / AVX-512 builds (see isa.h).
#define CPU_CAPABILITY DEFAULT
#define CPU_CAPABILITY_DEFAULT
#include "isa_impl.h"

#include <ATen/Version.h>

#include <algorithm>
#include <cctype>
#include <string>

namespace pdnet::cpu {
namespace {

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
bool cpu_has_avx512() {
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#else
bool cpu_has_avx2() {
  return false;
}
bool cpu_has_avx512() {
  return false;
}
#endif

// torch's choice: "default", "avx2", "avx512", ... (lower-cased)
std::string aten_capability() {
  std::string cap = at::get_cpu_capability();
  std::transform(cap.begin(), cap.end(), cap.begin(), [](unsigned char c) { return std::tolower(c); });
  return cap;
}

}  // namespace

const KernelTable& kernel_table() {
  static const KernelTable* table = [] {
    const std::string cap = aten_capability();
    const KernelTable* avx512 = table_AVX512();
    const KernelTable* avx2 = table_AVX2();
    if (avx512 != nullptr && cap.find("avx512") != std::string::npos && cpu_has_avx512()) return avx512;
    if (avx2 != nullptr && cap.find("default") == std::string::npos && cpu_has_avx2()) return avx2;
    return table_DEFAULT();
  }();
  return *table;
}

}  // namespace pdnet::cpu
