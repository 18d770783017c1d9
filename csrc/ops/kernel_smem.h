// The launch shapes of the CUDA kernels, as the launchers use them: per kernel instantiation,
// its threads per block and the dynamic shared memory it asks for. cuobjdump reports a kernel's
// registers, spills and static shared memory but not the dynamic shared memory its launcher
// requests; tests/test_cuda_resources.py reads this list (pdnet._C.cuda_kernel_smem()) to check
// every block fits the smallest GPU the build targets (sm_86: 99 KB).
//
// A .cu file records each kernel instantiation it launches when the library loads (no GPU
// needed), from a static initialiser:
//   const bool recorded = (record_kernel_smem("attn_fwd_mma_kernel<__half, 64>", threads, smem), true);
#pragma once

#include <string>
#include <vector>

namespace pdnet::ops {

struct KernelSmem {
  std::string kernel;  // the kernel's name with its template arguments, as written in C++
  int threads;         // threads per block
  int smem_bytes;      // dynamic shared memory per block
};

// records one kernel instantiation's launch shape (idempotent per name)
void record_kernel_smem(const char* kernel, int threads, int smem_bytes);

// every recorded launch shape, in recording order (empty in a build without CUDA)
const std::vector<KernelSmem>& kernel_smem();

}  // namespace pdnet::ops
