// A CPU emulator of CUDA device code, for testing kernels' index arithmetic without a GPU.
//
// The kernels' device code compiles as host C++ (g++ -DPDNET_CUDA_EMULATION) against this header:
// it defines the CUDA qualifiers away, provides threadIdx / blockIdx / blockDim / gridDim, the
// block and warp barriers, the warp shuffles, and a launch that runs every CUDA thread of a block
// as a fiber (ucontext) on one OS thread. Blocks run one after another, so the dynamic shared
// memory is one buffer that the driver defines (see PDNET_EMU_DYNAMIC_SMEM). The scheduler runs
// one ready thread at a time until it blocks at a barrier or a warp collective; a warp whose 32
// lanes all wait at a collective runs next, the block continues when every thread waits at
// __syncthreads; no ready thread before the end is a deadlock, reported with where each thread
// waits. The PTX instructions of
// mma_sm80.cuh (mma.sync, ldmatrix, cp.async, ex2) are emulated in cuda_emu_ptx.h.
//
// Checks beyond the results: divergent warp collectives, barriers not reached by every thread,
// shared-memory addresses outside the launch's dynamic shared memory, misaligned ldmatrix and
// cp.async addresses, cp.async reads outside the global buffers the driver registered, shared
// memory read before it is written (it starts as 0xff bytes: NaN in float32, float16 and
// bfloat16). Environment: PDNET_EMU_SCHEDULE = forward (default) | reverse | random:<seed>, the
// order in which ready threads run (a missing barrier shows under one order or another);
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
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
  void* sched_fake_stack = nullptr;
};

inline Launch* g = nullptr;
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

// ---------------------------------------------------------------------------------
// fibers

inline void switch_to_scheduler(bool exiting) {
  Thread& t = self();
#ifdef PDNET_EMU_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &t.fake_stack, g->sched_stack_bottom, g->sched_stack_size);
#else
  (void)exiting;
#endif
  swapcontext(&t.ctx, &g->scheduler);
#ifdef PDNET_EMU_ASAN
  __sanitizer_finish_switch_fiber(t.fake_stack, &g->sched_stack_bottom, &g->sched_stack_size);
#endif
}

// blocks the current thread in state s at `at` until the scheduler releases it
inline void wait_at(State s, const char* at) {
  Thread& t = self();
  t.state = s;
  t.at = at;
  switch_to_scheduler(false);
}

inline void fiber_main() {
#ifdef PDNET_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g->sched_stack_bottom, &g->sched_stack_size);
#endif
  g->body();
  Thread& t = self();
  long pending = static_cast<long>(t.open.size());
  for (const auto& grp : t.groups) pending += static_cast<long>(grp.size());
  g->unretired_copies += pending;
  t.state = State::Done;
  t.at = "exit";
  switch_to_scheduler(true);
}

// threadIdx of the thread about to run: a plain global, set at each switch
inline void set_thread_index() {
  const int i = g->current;
  threadIdx = uint3{static_cast<unsigned>(i) % g->block.x, (static_cast<unsigned>(i) / g->block.x) % g->block.y,
                    static_cast<unsigned>(i) / (g->block.x * g->block.y)};
}

inline void resume(int i) {
  g->current = i;
  set_thread_index();
  Thread& t = g->threads[i];
#ifdef PDNET_EMU_ASAN
  __sanitizer_start_switch_fiber(&g->sched_fake_stack, t.stack + 4096, kStackBytes - 4096);
#endif
  swapcontext(&g->scheduler, &t.ctx);
#ifdef PDNET_EMU_ASAN
  __sanitizer_finish_switch_fiber(g->sched_fake_stack, nullptr, nullptr);
#endif
  g->current = -1;
}

// "warp 0: lanes 0-31 at X" lines for a deadlock report
inline std::string describe_waits() {
  std::string s;
  for (int w = 0; w * 32 < g->nthreads; ++w) {
    s += "\n  warp " + std::to_string(w) + ":";
    int start = 32 * w;
    const int end = 32 * w + lanes_in_warp(w);
    for (int i = start + 1; i <= end; ++i) {
      if (i == end || std::strcmp(g->threads[i].at, g->threads[start].at) != 0 ||
          g->threads[i].state != g->threads[start].state || g->threads[i].line != g->threads[start].line) {
        const Thread& t = g->threads[start];
        s += " lanes " + std::to_string(start - 32 * w) + "-" + std::to_string(i - 1 - 32 * w) + " at " +
             (t.state == State::BlockWait ? "__syncthreads() " + std::string(t.at) + ":" + std::to_string(t.line)
                                          : std::string(t.at)) +
             ";";
        start = i;
      }
    }
  }
  return s;
}

// Moves the threads of one barrier from waiting to ready: at the front of the ready list for a
// warp (the released warp runs next, before threads that have not reached their barrier yet,
// which is what exposes a missing __syncthreads), at the back for the block.
inline void make_ready(std::deque<int>& ready, std::vector<int> ids, bool front) {
  Launch& L = *g;
  if (L.schedule == 1) std::reverse(ids.begin(), ids.end());
  if (L.schedule == 2) std::shuffle(ids.begin(), ids.end(), L.rng);
  for (const int i : ids) L.threads[i].state = State::Ready;
  if (front) {
    ready.insert(ready.begin(), ids.begin(), ids.end());
  } else {
    ready.insert(ready.end(), ids.begin(), ids.end());
  }
}

inline void run_block() {
  Launch& L = *g;
  for (int i = 0; i < L.nthreads; ++i) {
    Thread& t = L.threads[i];
    t.state = State::Ready;
    t.at = "start";
    t.collectives = 0;
    t.open.clear();
    t.groups.clear();
    getcontext(&t.ctx);
    t.ctx.uc_stack.ss_sp = t.stack + 4096;  // above the guard page
    t.ctx.uc_stack.ss_size = kStackBytes - 4096;
    t.ctx.uc_link = nullptr;
    makecontext(&t.ctx, fiber_main, 0);
  }
  for (Warp& w : L.warps) {
    w.arrivals[0] = w.arrivals[1] = 0;
    w.decoded[0] = w.decoded[1] = false;
  }
  std::memset(L.smem, 0xff, L.smem_bytes);  // unwritten shared memory reads as NaN
  std::deque<int> ready;
  std::vector<int> all(L.nthreads);
  for (int i = 0; i < L.nthreads; ++i) all[i] = i;
  make_ready(ready, all, false);
  std::vector<int> warp_waiting(L.warps.size(), 0);
  int done = 0, at_block = 0;
  for (;;) {
    if (ready.empty()) {
      if (done == L.nthreads) return;
      fail("deadlock: no thread can proceed;%s", describe_waits().c_str());
    }
    size_t pick = 0;
    if (L.schedule == 2) pick = std::uniform_int_distribution<size_t>(0, ready.size() - 1)(L.rng);
    const int i = ready[pick];
    ready.erase(ready.begin() + static_cast<std::ptrdiff_t>(pick));
    resume(i);
    const Thread& t = L.threads[i];
    const int w = i / 32;
    if (t.state == State::Done) {
      ++done;
    } else if (t.state == State::BlockWait) {
      ++at_block;
    } else if (t.state == State::WarpWait && ++warp_waiting[w] == lanes_in_warp(w)) {
      std::vector<int> lanes;
      for (int l = 0; l < lanes_in_warp(w); ++l) lanes.push_back(32 * w + l);
      warp_waiting[w] = 0;
      make_ready(ready, lanes, true);
    }
    if (at_block > 0 && at_block + done == L.nthreads) {
      std::vector<int> ids;
      for (int j = 0; j < L.nthreads; ++j)
        if (L.threads[j].state == State::BlockWait) ids.push_back(j);
      if (done > 0)  // undefined in CUDA: the condition around a __syncthreads differs between threads
        fail("__syncthreads at %s:%d reached by %d threads after %d threads exited", L.threads[ids[0]].at,
             L.threads[ids[0]].line, at_block, done);
      for (const int j : ids)
        if (L.threads[j].line != L.threads[ids[0]].line || std::strcmp(L.threads[j].at, L.threads[ids[0]].at) != 0)
          fail("__syncthreads: thread %d waits at %s:%d, thread %d at %s:%d", ids[0], L.threads[ids[0]].at,
               L.threads[ids[0]].line, j, L.threads[j].at, L.threads[j].line);
      at_block = 0;
      make_ready(ready, ids, false);
    }
  }
}

inline void read_config(Launch& L) {
  const char* s = std::getenv("PDNET_EMU_SCHEDULE");
  if (s == nullptr || std::strcmp(s, "forward") == 0) {
    L.schedule = 0;
  } else if (std::strcmp(s, "reverse") == 0) {
    L.schedule = 1;
  } else if (std::strncmp(s, "random:", 7) == 0) {
    L.schedule = 2;
    L.rng.seed(static_cast<unsigned>(std::strtoul(s + 7, nullptr, 10)));
  } else {
    fail("PDNET_EMU_SCHEDULE=%s: expected forward, reverse or random:<seed>", s);
  }
  const char* c = std::getenv("PDNET_EMU_CP_ASYNC");
  if (c != nullptr && std::strcmp(c, "early") != 0 && std::strcmp(c, "late") != 0)
    fail("PDNET_EMU_CP_ASYNC=%s: expected late or early", c);
  L.late_copies = c == nullptr || std::strcmp(c, "late") == 0;
}

// kernel<<<grid, block, smem_bytes>>>(args...) with the dynamic shared memory `smem` (the buffer
// PDNET_EMU_DYNAMIC_SMEM defines for the kernel's namespace); runs every block to completion.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes, unsigned char* smem,
            Args... args) {
  Launch L;
  L.kernel = name;
  L.grid = grid;
  L.block = block;
  L.nthreads = static_cast<int>(block.x * block.y * block.z);
  if (L.nthreads < 1 || L.nthreads > 1024) fail("launch of %s: %d threads per block", name, L.nthreads);
  if (smem_bytes > kSmemCapacity) fail("launch of %s: %zu bytes of dynamic shared memory", name, smem_bytes);
  L.smem_bytes = smem_bytes;
  L.smem = smem;
  read_config(L);
  std::tuple<Params...> params(args...);
  L.body = [&] { std::apply(kernel, params); };
  L.threads.resize(L.nthreads);
  L.warps.resize((L.nthreads + 31) / 32);
  for (Thread& t : L.threads) {
    void* m = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) fail("launch of %s: cannot map a fiber stack", name);
    mprotect(m, 4096, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
    t.stack = static_cast<char*>(m);
  }
#ifdef PDNET_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(smem, kSmemCapacity);
  ASAN_POISON_MEMORY_REGION(smem + smem_bytes, kSmemCapacity - smem_bytes);
#endif
  g = &L;
  gridDim = grid;
  blockDim = block;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        run_block();
      }
  if (L.unretired_copies > 0)
    std::fprintf(stderr, "[cuda_emu] %s: %ld cp.async copies were never retired by a wait_group\n", name,
                 L.unretired_copies);
#ifdef PDNET_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(smem, kSmemCapacity);
#endif
  for (Thread& t : L.threads) munmap(t.stack, kStackBytes);
  g = nullptr;
}

// ---------------------------------------------------------------------------------
// warp collectives: every lane publishes words, waits for the 32 lanes, then reads all of them

inline int warp_exchange(const char* op, const uint32_t* words, int n) {
  Thread& t = self();
  const int lane = lane_id();
  Warp& w = g->warps[g->current / 32];
  const int buf = static_cast<int>(t.collectives++ & 1);
  if (w.arrivals[buf] == lanes_in_warp(g->current / 32)) w.arrivals[buf] = 0;
  if (w.arrivals[buf]++ == 0) w.decoded[buf] = false;
  if (n > 0) std::memcpy(w.data[buf][lane], words, sizeof(uint32_t) * n);
  w.op[buf][lane] = op;
  wait_at(State::WarpWait, op);
  for (int l = 0; l < lanes_in_warp(g->current / 32); ++l)
    if (std::strcmp(w.op[buf][l], op) != 0)
      fail("divergent warp collective: this lane is at %s, lane %d at %s", op, l, w.op[buf][l]);
  return buf;
}

inline uint32_t lane_word(int buf, int lane, int k = 0) {
  return g->warps[g->current / 32].data[buf][lane][k];
}

}  // namespace pdnet_emu

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
