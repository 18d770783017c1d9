// The host side of the kernels' headers under the emulator (cuda_utils.cuh includes this instead
// of ATen when PDNET_CUDA_EMULATION is defined): at::Tensor as an empty stand-in (the launchers
// only name a tensor in their errors), TORCH_CHECK, the launch-shape record of kernel_smem.h, and
// pdnet::cuda::launch_with_smem running the kernel on the emulator. The launchers' own code (head
// dim dispatch, tiles, grid) thus runs as it is; each launch is checked against sm_86's shared
// memory per block and against the launch shape recorded for the kernel.
#pragma once

#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "../../csrc/ops/kernel_smem.h"
#include "cuda_emu.h"

namespace at {
struct Tensor {};
}  // namespace at

namespace pdnet_emu {

template <typename... A>
[[noreturn]] void torch_check_failed(const char* cond, const A&... a) {
  std::ostringstream s;
  (s << ... << a);
  fail("TORCH_CHECK(%s) failed: %s", cond, s.str().c_str());
}

// kernel -> its name as the launch-shape record spells it, and the dynamic shared memory its
// namespace declares (the driver names every instantiation it may launch)
struct KernelInfo {
  std::string name;
  unsigned char* smem;
};
inline std::map<const void*, KernelInfo>& kernel_names() {
  static std::map<const void*, KernelInfo> names;
  return names;
}
template <typename... Params>
void name_kernel(void (*kernel)(Params...), const std::string& name, unsigned char* smem) {
  kernel_names()[reinterpret_cast<const void*>(kernel)] = {name, smem};
}

// the launches so far: (kernel name, blocks, threads, dynamic shared memory)
struct LaunchRecord {
  std::string kernel;
  int64_t blocks;
  int threads, smem_bytes;
  long ldmatrix_matrices, ldmatrix_conflicts;
};
inline std::vector<LaunchRecord>& launches() {
  static std::vector<LaunchRecord> all;
  return all;
}

constexpr int kSm86SmemPerBlock = 101376;

}  // namespace pdnet_emu

#define TORCH_CHECK(cond, ...)                                                    \
  do {                                                                            \
    if (!(cond)) pdnet_emu::torch_check_failed(#cond __VA_OPT__(, ) __VA_ARGS__); \
  } while (0)

namespace pdnet::ops {

inline std::vector<KernelSmem>& kernel_smem_list() {
  static std::vector<KernelSmem> list;
  return list;
}
void record_kernel_smem(const char* kernel, int threads, int smem_bytes) {
  for (const KernelSmem& k : kernel_smem_list())
    if (k.kernel == kernel) return;
  kernel_smem_list().push_back({kernel, threads, smem_bytes});
}
const std::vector<KernelSmem>& kernel_smem() {
  return kernel_smem_list();
}

}  // namespace pdnet::ops

// the dynamic shared memory of the kernels in pdnet::cuda (the driver includes this header once)
PDNET_EMU_DYNAMIC_SMEM(pdnet::cuda, smem)

namespace pdnet::cuda {

// attention_tiles.cuh's launch_with_smem, on the emulator
template <typename... Params, typename... Args>
inline void launch_with_smem(const char* where, const at::Tensor&, void (*kernel)(Params...), int64_t blocks,
                             int threads, int smem_bytes, Args... args) {
  const auto named = pdnet_emu::kernel_names().find(reinterpret_cast<const void*>(kernel));
  if (named == pdnet_emu::kernel_names().end())
    pdnet_emu::fail("%s: launch of a kernel the driver did not name", where);
  const std::string& name = named->second.name;
  if (blocks < 1 || blocks >= (int64_t(1) << 31))
    pdnet_emu::fail("%s: %s with %lld blocks", where, name.c_str(), (long long)blocks);
  if (smem_bytes > pdnet_emu::kSm86SmemPerBlock)
    pdnet_emu::fail("%s: %s asks for %d bytes of shared memory, sm_86 allows %d", where, name.c_str(), smem_bytes,
                    pdnet_emu::kSm86SmemPerBlock);
  bool recorded = false;
  for (const auto& k : pdnet::ops::kernel_smem()) {
    if (k.kernel != name) continue;
    recorded = true;
    if (k.threads != threads || k.smem_bytes != smem_bytes)
      pdnet_emu::fail("%s: %s launched with %d threads and %d bytes, recorded with %d and %d", where, name.c_str(),
                      threads, smem_bytes, k.threads, k.smem_bytes);
  }
  if (!recorded) pdnet_emu::fail("%s: %s is launched but its launch shape is not recorded", where, name.c_str());
  const long matrices = pdnet_emu::g_ldmatrix_matrices, conflicts = pdnet_emu::g_ldmatrix_conflicts;
  pdnet_emu::launch(name.c_str(), kernel, dim3(static_cast<unsigned>(blocks)), dim3(threads),
                    static_cast<size_t>(smem_bytes), named->second.smem, args...);
  pdnet_emu::launches().push_back({name, blocks, threads, smem_bytes, pdnet_emu::g_ldmatrix_matrices - matrices,
                                   pdnet_emu::g_ldmatrix_conflicts - conflicts});
}

}  // namespace pdnet::cuda
