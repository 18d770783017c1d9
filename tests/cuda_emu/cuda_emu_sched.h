// The emulator's scheduler: CUDA threads as fibers, their barriers, the launch, and the warp
// exchange that every warp collective goes through. Part of cuda_emu.h (include that).
#pragma once

namespace pdnet_emu {

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
  races::current = i;
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
  races::current = -1;
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
  L.chunks.assign((L.smem_bytes + 15) / 16, Chunk{});
  L.epoch = 0;
  if (races::kRaces) {
    L.words.assign(L.smem_bytes / 4, races::Word{-1, 0, 0, ~uint64_t(0), 0});
    races::base = L.smem;
    races::bytes = L.smem_bytes;
    races::words = L.words.data();
    races::epoch = 0;
    std::fill(std::begin(races::warp_sync), std::end(races::warp_sync), 0u);
  }
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
      ++races::warp_sync[w];
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
      races::epoch = ++L.epoch;
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
  const uint64_t launch_count = ++g_launches;
  gridDim = grid;
  blockDim = block;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        blockIdx = uint3{x, y, z};
        races::launch_block = (launch_count << 32) | (((uint64_t(z) * grid.y + y) * grid.x + x) + 1);
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
