// A CPU emulator of CUDA device code, for testing kernels' index arithmetic without a GPU.
//
// The kernels' device code compiles as host C++ (g++ -DPDNET_CUDA_EMULATION) against this header:
// it defines the CUDA qualifiers away, provides threadIdx / blockIdx / blockDim / gridDim, the
// block and warp barriers, the warp shuffles, and a launch that runs every CUDA thread of a block
// as a fiber (ucontext) on one OS thread. Blocks run one after another, so the dynamic shared
// memory is one buffer that the driver defines (see PDNET_EMU_DYNAMIC_SMEM). The scheduler
// (cuda_emu_sched.h) runs one ready thread at a time until it blocks at a barrier or a warp
// collective; a warp whose 32 lanes all wait at a collective runs next, the block continues when
// every thread waits at __syncthreads; no ready thread before the end is a deadlock, reported
// with where each thread waits. The PTX instructions of mma_sm80.cuh (mma.sync, ldmatrix,
// cp.async, ex2) are emulated in cuda_emu_ptx.h.
//
// Checks beyond the results: divergent warp collectives, barriers not reached by every thread,
// shared-memory addresses outside the launch's dynamic shared memory, misaligned ldmatrix and
// cp.async addresses, cp.async reads outside the global buffers the driver registered, shared
// memory read before it is written (it starts as 0xff bytes: NaN in float32, float16 and
// bfloat16), and races between cp.async and ldmatrix of different warps with no __syncthreads
// in between (whatever the schedule: cuda_emu_ptx.h).
// Environment: PDNET_EMU_SCHEDULE = forward (default) | reverse | random:<seed>, the order in
// which ready threads run (a missing barrier shows under one order or another);
// PDNET_EMU_CP_ASYNC = late (default: a copy lands at the cp.async.wait_group that retires it,
// so a missing wait reads stale data) | early (at the cp.async: an overwrite of a tile other
// warps still read shows). Built with -fsanitize=address, the fibers' stacks are announced to
// ASan and the shared memory past the launch's size is poisoned.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <vector_types.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define PDNET_EMU_ASAN 1
#endif

#include "cuda_emu_races.h"

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__
#define __launch_bounds__(...)

inline uint3 threadIdx{};
inline uint3 blockIdx{};
inline dim3 blockDim{};
inline dim3 gridDim{};
constexpr int warpSize = 32;

// The dynamic shared memory of the kernels declared in namespace NS as
// `extern __shared__ ... unsigned char NAME[];` (blocks run one at a time: one buffer).
#define PDNET_EMU_DYNAMIC_SMEM(NS, NAME)                     \
  namespace NS {                                             \
  alignas(128) unsigned char NAME[pdnet_emu::kSmemCapacity]; \
  }

namespace pdnet_emu {

constexpr size_t kSmemCapacity = 232448;  // sm_90's dynamic shared memory per block
constexpr size_t kStackBytes = 512 * 1024;
constexpr int kSlotWords = 8;

enum class State { Ready, WarpWait, BlockWait, Done };

struct CpCopy {
  uint32_t dst;
  const void* src;
  int bytes;  // bytes read from src; the rest of the 16 is zero-filled
};

struct Thread {
  ucontext_t ctx;
  char* stack = nullptr;
  State state = State::Ready;
  const char* at = "";     // the barrier or collective it waits at
  int line = 0;            // and the source line of a __syncthreads
  uint64_t collectives = 0;  // warp collectives so far (selects the warp's exchange buffer)
  std::vector<CpCopy> open;  // cp.async not yet committed
  std::deque<std::vector<CpCopy>> groups;  // committed, not yet retired
  void* fake_stack = nullptr;
};

// One warp's exchange area, double-buffered by the lanes' collective count: a lane can only
// publish into a buffer again after every lane has passed the collective in between, hence
// after every lane has read the buffer's previous contents.
struct Warp {
  uint32_t data[2][32][kSlotWords];
  const char* op[2][32];
  int arrivals[2];
  bool decoded[2];
  float A[2][16][16], B[2][16][8];  // mma operands, decoded once per collective
};

// Who last touched a 16-byte chunk of shared memory through cp.async and ldmatrix, for the race
// check of cuda_emu_ptx.h. An epoch is the time between two block barriers.
struct Chunk {
  int writer_warp = -1;      // the warp whose cp.async wrote it last
  bool pending = false;      // that copy is issued, not yet retired by its thread's wait_group
  uint64_t write_epoch = 0;  // when it was retired
  uint64_t read_epoch = ~uint64_t(0);
  uint64_t read_warps = 0;  // the warps that read it by ldmatrix in read_epoch
};

struct Launch {
  std::string kernel;
  dim3 grid, block;
  int nthreads = 0;
  size_t smem_bytes = 0;
  unsigned char* smem = nullptr;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  ucontext_t scheduler;
  int current = -1;
  std::function<void()> body;
  int schedule = 0;  // 0 forward, 1 reverse, 2 random
  std::mt19937 rng;
  bool late_copies = true;
  long unretired_copies = 0;
  uint64_t epoch = 0;
  std::vector<Chunk> chunks;  // smem_bytes / 16
  std::vector<races::Word> words;  // smem_bytes / 4, with PDNET_EMU_RACES
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
  void* sched_fake_stack = nullptr;
};

inline Launch* g = nullptr;
// 8 x 8 matrices loaded by ldmatrix so far, and the extra shared-memory wavefronts their bank
// conflicts cost (0 when the 8 rows of every matrix fall in distinct groups of 4 banks)
inline long g_ldmatrix_matrices = 0, g_ldmatrix_conflicts = 0;
inline uint64_t g_launches = 0;  // launches so far
inline std::vector<std::pair<const unsigned char*, size_t>> g_global_buffers;

[[noreturn]] inline void fail(const char* fmt, ...) {
  std::fprintf(stderr, "[cuda_emu] ");
  if (g != nullptr) {
    std::fprintf(stderr, "%s, block (%u, %u, %u)", g->kernel.c_str(), blockIdx.x, blockIdx.y, blockIdx.z);
    if (g->current >= 0)
      std::fprintf(stderr, ", thread %d (warp %d, lane %d)", g->current, g->current / 32, g->current % 32);
    std::fprintf(stderr, ": ");
  }
  va_list ap;
  va_start(ap, fmt);
  std::vfprintf(stderr, fmt, ap);
  va_end(ap);
  std::fprintf(stderr, "\n");
  std::fflush(stderr);
  std::_Exit(3);
}

[[noreturn]] inline void races::report(const char* what, size_t offset, int other) {
  if (other >= 0) fail("shared-memory race: %s (byte %zu, thread %d)", what, offset, other);
  fail("shared-memory race: %s (byte %zu)", what, offset);
}

[[noreturn]] inline void races::report_output(int output, size_t offset, uint64_t owner) {
  fail("output %d, byte %zu: written by block %llu and by this block in one launch", output, offset,
       static_cast<unsigned long long>((owner & 0xffffffffu) - 1));
}

// an output array of the launches to come: with PDNET_EMU_RACES, each of its bytes may be written
// by one block per launch
inline void output_buffer(void* p, size_t bytes) {
  if (!races::kRaces || bytes == 0) return;
  if (races::n_outputs == 16) fail("more than 16 output buffers");
  auto* owner = new uint64_t[bytes]();
  races::outputs[races::n_outputs++] = {static_cast<const unsigned char*>(p), bytes, owner};
}

// a global buffer that cp.async may read (the driver registers its inputs)
inline void global_buffer(const void* p, size_t bytes) {
  g_global_buffers.emplace_back(static_cast<const unsigned char*>(p), bytes);
}
inline void check_global_read(const void* p, size_t bytes, const char* what) {
  if (g_global_buffers.empty()) return;
  const auto* b = static_cast<const unsigned char*>(p);
  for (const auto& [base, size] : g_global_buffers)
    if (b >= base && b + bytes <= base + size) return;
  fail("%s reads %zu bytes at %p, outside every registered global buffer", what, bytes, p);
}

inline Thread& self() {
  return g->threads[g->current];
}
inline int lane_id() {
  return g->current & 31;
}
inline int lanes_in_warp(int w) {
  return std::min(32, g->nthreads - 32 * w);
}

}  // namespace pdnet_emu

#include "cuda_emu_sched.h"

// ---------------------------------------------------------------------------------
// CUDA builtins

// __syncthreads() is a macro: every thread of the block must wait at the same one (a source
// line), else the block's barriers pair up differently than the code intends.
inline void pdnet_emu_syncthreads(const char* file, int line) {
  pdnet_emu::self().line = line;
  pdnet_emu::wait_at(pdnet_emu::State::BlockWait, file);
}
#define __syncthreads() pdnet_emu_syncthreads(__FILE__, __LINE__)

inline void __syncwarp(unsigned mask = 0xffffffffu) {
  if (mask != 0xffffffffu) pdnet_emu::fail("__syncwarp: partial-warp mask 0x%x is not emulated", mask);
  pdnet_emu::warp_exchange("__syncwarp", nullptr, 0);
}

[[noreturn]] inline void __trap() {
  pdnet_emu::fail("__trap()");
}

inline size_t __cvta_generic_to_shared(const void* p) {
  const auto* b = static_cast<const unsigned char*>(p);
  if (b < pdnet_emu::g->smem || b > pdnet_emu::g->smem + pdnet_emu::g->smem_bytes)
    pdnet_emu::fail("__cvta_generic_to_shared(%p): not in the launch's %zu bytes of dynamic shared memory", p,
                    pdnet_emu::g->smem_bytes);
  return static_cast<size_t>(b - pdnet_emu::g->smem);
}

namespace pdnet_emu {

// src lane of each shuffle kind, for the lane `lane` of a segment of `width` lanes
template <typename V>
V shuffle(const char* op, unsigned mask, V v, int (*src_of)(int lane, int arg, int width), int arg, int width) {
  static_assert(sizeof(V) == 4 || sizeof(V) == 8, "shuffles of 4- and 8-byte values");
  if (mask != 0xffffffffu) fail("%s: partial-warp mask 0x%x is not emulated", op, mask);
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) fail("%s: width %d", op, width);
  uint32_t words[2] = {0, 0};
  std::memcpy(words, &v, sizeof(V));
  const int buf = warp_exchange(op, words, 2);
  const int src = src_of(lane_id(), arg, width);
  V out;
  uint32_t got[2] = {lane_word(buf, src, 0), lane_word(buf, src, 1)};
  std::memcpy(&out, got, sizeof(V));
  return out;
}

inline int src_idx(int lane, int src, int width) {
  return (lane / width) * width + (src & (width - 1));
}
inline int src_xor(int lane, int mask, int width) {
  const int s = lane ^ mask;
  return s >= (lane / width + 1) * width ? lane : s;
}
inline int src_down(int lane, int delta, int width) {
  const int s = lane + delta;
  return s >= (lane / width + 1) * width ? lane : s;
}
inline int src_up(int lane, int delta, int width) {
  const int s = lane - delta;
  return s < (lane / width) * width ? lane : s;
}

}  // namespace pdnet_emu

template <typename V>
inline V __shfl_sync(unsigned mask, V v, int src, int width = 32) {
  return pdnet_emu::shuffle("__shfl_sync", mask, v, pdnet_emu::src_idx, src, width);
}
template <typename V>
inline V __shfl_xor_sync(unsigned mask, V v, int lane_mask, int width = 32) {
  return pdnet_emu::shuffle("__shfl_xor_sync", mask, v, pdnet_emu::src_xor, lane_mask, width);
}
template <typename V>
inline V __shfl_down_sync(unsigned mask, V v, unsigned delta, int width = 32) {
  return pdnet_emu::shuffle("__shfl_down_sync", mask, v, pdnet_emu::src_down, static_cast<int>(delta), width);
}
template <typename V>
inline V __shfl_up_sync(unsigned mask, V v, unsigned delta, int width = 32) {
  return pdnet_emu::shuffle("__shfl_up_sync", mask, v, pdnet_emu::src_up, static_cast<int>(delta), width);
}

#include "cuda_emu_ptx.h"
