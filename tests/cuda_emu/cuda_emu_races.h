// Race detection for every load and store of shared memory (not only cp.async / ldmatrix), when
// built with -DPDNET_EMU_RACES and -fsanitize=thread at compile time only: the compiler then calls
// __tsan_read<N> / __tsan_write<N> before each memory access, and this file defines those hooks
// itself (the ThreadSanitizer runtime is not linked). Per 4-byte word of the launch's dynamic
// shared memory it keeps the last writer and the warps that read it since the last
// __syncthreads, and stops on
// * a read of a word another warp wrote since the last __syncthreads, or another lane of the same
//   warp wrote with no warp synchronisation (__syncwarp or a warp collective) in between;
// * a write of a word another warp read since the last __syncthreads.
// In the global arrays the driver registers as outputs (output_buffer), each byte may be written
// by one block per launch: a second block writing it stops the run (two owners of an
// output element: a race between blocks, or a result that depends on their order).
// Part of cuda_emu.h (include that).
#pragma once

#include <cstddef>
#include <cstdint>

namespace pdnet_emu::races {

#ifdef PDNET_EMU_RACES
constexpr bool kRaces = true;
#else
constexpr bool kRaces = false;
#endif

struct Word {
  int32_t writer;        // thread, or -1
  uint32_t write_wsync;  // the writer warp's synchronisations when it wrote
  uint64_t write_epoch;
  uint64_t read_epoch;
  uint64_t read_warps;  // bit w: warp w read it in read_epoch
};

// the state the hooks read (plain globals: the hooks must not call instrumented code)
inline const unsigned char* base = nullptr;
inline size_t bytes = 0;
inline Word* words = nullptr;
inline int current = -1;           // the running CUDA thread, -1 in the scheduler and the driver
inline uint64_t epoch = 0;         // block barriers so far
inline uint32_t warp_sync[32] = {};  // per warp: synchronisations so far

// registered outputs: per byte, the (launch, block) that wrote it, launch << 32 | block + 1
struct Output {
  const unsigned char* base;
  size_t bytes;
  uint64_t* owner;
};
inline Output outputs[16] = {};
inline int n_outputs = 0;
inline uint64_t launch_block = 0;  // the running block: launch << 32 | (block + 1)

[[noreturn]] inline void report(const char* what, size_t offset, int other);
[[noreturn]] inline void report_output(int output, size_t offset, uint64_t owner);

// a write to a registered output by a block other than the one that wrote it in this launch
__attribute__((no_sanitize_thread)) inline void output_write(const void* p, size_t n) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (int o = 0; o < n_outputs; ++o) {
    const Output& out = outputs[o];
    const auto off = static_cast<size_t>(b - out.base);
    if (b < out.base || off >= out.bytes) continue;
    for (size_t i = off; i < off + n && i < out.bytes; ++i) {
      if (out.owner[i] >> 32 == launch_block >> 32 && out.owner[i] != launch_block) report_output(o, i, out.owner[i]);
      out.owner[i] = launch_block;
    }
  }
}

__attribute__((no_sanitize_thread)) inline void access(const void* p, size_t n, bool write) {
  const auto off = static_cast<size_t>(static_cast<const unsigned char*>(p) - base);
  if (current < 0) return;
  if (write && n_outputs > 0) output_write(p, n);
  if (words == nullptr || off >= bytes) return;
  const int w = current / 32;
  for (size_t i = off / 4; i <= (off + n - 1) / 4 && i < bytes / 4; ++i) {
    Word& word = words[i];
    if (!write) {
      if (word.writer >= 0 && word.writer != current && word.write_epoch == epoch) {
        if (word.writer / 32 != w)
          report("reads a word another warp wrote since the last __syncthreads", i * 4, word.writer);
        if (word.write_wsync == warp_sync[w])
          report("reads a word another lane wrote with no __syncwarp in between", i * 4, word.writer);
      }
      if (word.read_epoch != epoch) {
        word.read_epoch = epoch;
        word.read_warps = 0;
      }
      word.read_warps |= uint64_t(1) << w;
    } else {
      if (word.read_epoch == epoch && (word.read_warps & ~(uint64_t(1) << w)) != 0)
        report("writes a word another warp read since the last __syncthreads", i * 4, -1);
      word.writer = current;
      word.write_epoch = epoch;
      word.write_wsync = warp_sync[w];
    }
  }
}

}  // namespace pdnet_emu::races

#ifdef PDNET_EMU_RACES
// the hooks -fsanitize=thread inserts
#define PDNET_EMU_TSAN_HOOKS(N)                                                            \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_read##N(void* p) {            \
    pdnet_emu::races::access(p, N, false);                                                 \
  }                                                                                        \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_write##N(void* p) {           \
    pdnet_emu::races::access(p, N, true);                                                  \
  }                                                                                        \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_unaligned_read##N(void* p) {  \
    pdnet_emu::races::access(p, N, false);                                                 \
  }                                                                                        \
  extern "C" __attribute__((no_sanitize_thread)) void __tsan_unaligned_write##N(void* p) { \
    pdnet_emu::races::access(p, N, true);                                                  \
  }
PDNET_EMU_TSAN_HOOKS(1)
PDNET_EMU_TSAN_HOOKS(2)
PDNET_EMU_TSAN_HOOKS(4)
PDNET_EMU_TSAN_HOOKS(8)
PDNET_EMU_TSAN_HOOKS(16)
extern "C" __attribute__((no_sanitize_thread)) void __tsan_read_range(void* p, size_t n) {
  pdnet_emu::races::access(p, n, false);
}
extern "C" __attribute__((no_sanitize_thread)) void __tsan_write_range(void* p, size_t n) {
  pdnet_emu::races::access(p, n, true);
}
// the guard of a function-local static's initialisation (one OS thread: a plain load)
extern "C" __attribute__((no_sanitize_thread)) char __tsan_atomic8_load(const volatile char* p, int) {
  return *p;
}
extern "C" void __tsan_init() {
}
extern "C" void __tsan_func_entry(void*) {
}
extern "C" void __tsan_func_exit() {
}
extern "C" void __tsan_vptr_update(void**, void*) {
}
extern "C" void __tsan_vptr_read(void**) {
}
#endif  // PDNET_EMU_RACES
