#include "kernel_smem.h"

namespace pdnet::ops {

namespace {
std::vector<KernelSmem>& table() {
  static std::vector<KernelSmem> entries;  // constructed on first use: safe from any static initialiser
  return entries;
}
}  // namespace

void record_kernel_smem(const char* kernel, int threads, int smem_bytes) {
  for (KernelSmem& e : table()) {
    if (e.kernel == kernel) {
      e.threads = threads;
      e.smem_bytes = smem_bytes;
      return;
    }
  }
  table().push_back({kernel, threads, smem_bytes});
}

const std::vector<KernelSmem>& kernel_smem() {
  return table();
}

}  // namespace pdnet::ops
