// Work distribution of the CPU kernels (ops and evaluation).
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace pdnet::cpu {

// Runs body(item) for item in [0, n) on torch's intra-op threads. Items are handed
// out one at a time from a shared counter rather than split statically, so a thread
// that the OS delays (a busy machine) does not hold the others back. make_state()
// is called once per thread (scratch buffers); body(item, state).
template <typename MakeState, typename Body>
void parallel_items(int64_t n, MakeState make_state, Body body) {
  if (n <= 0) return;
  const int64_t workers = std::min<int64_t>(n, at::get_num_threads());
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    auto state = make_state();
    for (int64_t w = begin; w < end; ++w) {
      for (int64_t item = next.fetch_add(1, std::memory_order_relaxed); item < n;
           item = next.fetch_add(1, std::memory_order_relaxed))
        body(item, state);
    }
  });
}

// The same for a body(item) that needs no per-thread state.
template <typename Body>
void parallel_items(int64_t n, Body body) {
  parallel_items(n, [] { return 0; }, [&](int64_t item, int) { body(item); });
}

}  // namespace pdnet::cpu
