// The PTX instructions of csrc/ops/cuda/mma_sm80.cuh, emulated from the PTX ISA's definitions
// (not from mma_sm80.cuh's loaders, which the emulator tests):
// * mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 ("Matrix Fragments for
//   mma.m16n8k16 with floating point type"): with groupID g = lane >> 2 and threadID_in_group
//   t = lane % 4, the A elements a0..a7 (low half of a register first) sit at row g for a0, a1,
//   a4, a5 and g + 8 otherwise, column 2t + (i & 1) for i < 4 and 2t + (i & 1) + 8 otherwise;
//   the B elements b0..b3 at row (k) 2t + (i & 1) for i < 2 and 2t + (i & 1) + 8 otherwise,
//   column (n) g; the C / D elements c0..c3 at row g for c0, c1 and g + 8 otherwise, column
//   2t + (i & 1). Products of 16-bit values are exact in float32; the sums run in float32.
// * ldmatrix.sync.aligned.m8n8.x4{.trans}.shared.b16: lanes 8i .. 8i+7 give the row addresses
//   of matrix i; register i of lane l holds matrix i's row l / 4, elements 2(l % 4) and
//   2(l % 4) + 1 (low half first); with .trans, rows 2(l % 4) and 2(l % 4) + 1 of column l / 4.
// * cp.async.cg.shared.global [dst], [src], 16, src_size: 16 bytes, src_size of them read from
//   src and the rest zero-filled; commit_group / wait_group N per thread.
// * ex2.approx.ftz.f32: 2^x with denormal results flushed to zero, and an error of about 2 ulp.
#pragma once

namespace pdnet_emu {

inline uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}

template <typename T>
inline float bits_to_float(uint16_t h) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  } else {
    static_assert(std::is_same<T, __half>::value, "float16 or bfloat16 operands");
    __half_raw raw;
    raw.x = h;
    return __half2float(__half(raw));
  }
}

// element e (0: low half, 1: high half) of a register of 16-bit pairs
template <typename T>
inline float half_of(uint32_t reg, int e) {
  return bits_to_float<T>(static_cast<uint16_t>(reg >> (16 * e)));
}

template <typename T>
inline void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  const uint32_t words[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  const int buf = warp_exchange("mma.m16n8k16", words, 6);
  Warp& w = g->warps[g->current / 32];
  if (lanes_in_warp(g->current / 32) != 32) fail("mma.m16n8k16 in a warp of %d lanes", lanes_in_warp(g->current / 32));
  if (!w.decoded[buf]) {
    for (int lane = 0; lane < 32; ++lane) {
      const int gid = lane >> 2, tig = lane & 3;
      for (int i = 0; i < 8; ++i) {  // a_i: register i / 2, half i % 2
        const int row = (i < 2 || (i >= 4 && i < 6)) ? gid : gid + 8;
        const int col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
        w.A[buf][row][col] = half_of<T>(w.data[buf][lane][i / 2], i & 1);
      }
      for (int i = 0; i < 4; ++i) {  // b_i: register 4 + i / 2, half i % 2
        const int k = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0);
        w.B[buf][k][gid] = half_of<T>(w.data[buf][lane][4 + i / 2], i & 1);
      }
    }
    w.decoded[buf] = true;
  }
  const int lane = lane_id(), gid = lane >> 2, tig = lane & 3;
  for (int i = 0; i < 4; ++i) {
    const int row = i < 2 ? gid : gid + 8;
    const int col = tig * 2 + (i & 1);
    float acc = c[i];
    for (int k = 0; k < 16; ++k) acc += w.A[buf][row][k] * w.B[buf][k][col];
    c[i] = acc;
  }
}

inline void check_smem_range(const char* op, uint32_t addr, size_t bytes) {
  if (addr % 16 != 0) fail("%s: shared address %u is not 16-byte aligned", op, addr);
  if (addr + bytes > g->smem_bytes)
    fail("%s: shared address %u + %zu bytes is past the launch's %zu bytes of dynamic shared memory", op, addr, bytes,
         g->smem_bytes);
}

inline uint16_t smem_u16(uint32_t addr) {
  uint16_t v;
  std::memcpy(&v, g->smem + addr, 2);
  return v;
}

// Races through shared memory between warps, at 16-byte granularity (one ldmatrix row, one
// cp.async): a warp's ldmatrix of a chunk another warp's cp.async has not retired, or retired
// after the last __syncthreads (read after write), and a cp.async into a chunk another warp read
// since the last __syncthreads (write after read). Plain loads and stores are not tracked.
inline void check_read(uint32_t addr, const char* op) {
  Chunk& c = g->chunks[addr / 16];
  const int w = g->current / 32;
  if (c.pending)
    fail(
        "%s reads shared bytes %u..%u while warp %d's cp.async into them is in flight (not retired by a "
        "wait_group yet)",
        op, addr, addr + 15, c.writer_warp);
  if (c.writer_warp >= 0 && c.writer_warp != w && c.write_epoch == g->epoch)
    fail("%s reads shared bytes %u..%u, which warp %d's cp.async landed in after the last __syncthreads", op, addr,
         addr + 15, c.writer_warp);
  if (c.read_epoch != g->epoch) {
    c.read_epoch = g->epoch;
    c.read_warps = 0;
  }
  c.read_warps |= uint64_t(1) << w;
}
inline void check_write(uint32_t addr) {
  Chunk& c = g->chunks[addr / 16];
  const int w = g->current / 32;
  if (c.read_epoch == g->epoch && (c.read_warps & ~(uint64_t(1) << w)) != 0)
    fail(
        "cp.async into shared bytes %u..%u, which another warp read by ldmatrix since the last __syncthreads (a "
        "__syncthreads missing after those reads, or before them and after the copies)",
        addr, addr + 15);
  c.writer_warp = w;
  c.pending = true;
}

inline void ldmatrix_x4(uint32_t r[4], uint32_t addr, bool trans) {
  const char* op = trans ? "ldmatrix.x4.trans" : "ldmatrix.x4";
  check_smem_range(op, addr, 16);
  const int buf = warp_exchange(op, &addr, 1);
  if (lanes_in_warp(g->current / 32) != 32) fail("%s in a warp of %d lanes", op, lanes_in_warp(g->current / 32));
  const int lane = lane_id();
  if ((lane & 7) == 0)  // the 8 row addresses of matrix lane / 8: one check per row
  {
    int per_group[8] = {};  // rows per group of 4 banks (16 bytes of each 128): a row each is one wavefront
    for (int k = 0; k < 8; ++k) {
      check_read(lane_word(buf, lane + k), op);
      ++per_group[lane_word(buf, lane + k) / 16 % 8];
    }
    ++g_ldmatrix_matrices;
    g_ldmatrix_conflicts += *std::max_element(per_group, per_group + 8) - 1;
  }
  for (int i = 0; i < 4; ++i) {
    if (!trans) {  // row lane / 4, elements 2 (lane % 4) .. + 1
      const uint32_t row = lane_word(buf, 8 * i + (lane >> 2));
      std::memcpy(&r[i], g->smem + row + 4 * (lane & 3), 4);
    } else {  // column lane / 4 of rows 2 (lane % 4) and 2 (lane % 4) + 1
      const uint32_t row0 = lane_word(buf, 8 * i + 2 * (lane & 3));
      const uint32_t row1 = lane_word(buf, 8 * i + 2 * (lane & 3) + 1);
      r[i] = static_cast<uint32_t>(smem_u16(row0 + 2 * (lane >> 2))) |
             (static_cast<uint32_t>(smem_u16(row1 + 2 * (lane >> 2))) << 16);
    }
  }
}

inline void do_copy(const CpCopy& c) {
  std::memcpy(g->smem + c.dst, c.src, c.bytes);
  std::memset(g->smem + c.dst + c.bytes, 0, 16 - c.bytes);
}
inline void retire(const CpCopy& c) {
  if (g->late_copies) do_copy(c);
  Chunk& ch = g->chunks[c.dst / 16];
  if (ch.writer_warp == g->current / 32) {  // not overwritten by another warp's copy since
    ch.pending = false;
    ch.write_epoch = g->epoch;
  }
}

inline void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  check_smem_range("cp.async", dst, 16);
  if (src_bytes != 0 && src_bytes != 16) fail("cp.async: src-size %d (the kernels use 0 or 16)", src_bytes);
  if (src_bytes > 0) {
    if (reinterpret_cast<uintptr_t>(src) % 16 != 0) fail("cp.async: global address %p is not 16-byte aligned", src);
    check_global_read(src, 16, "cp.async");
  }
  const CpCopy c{dst, src, src_bytes};
  check_write(dst);
  if (!g->late_copies) do_copy(c);
  self().open.push_back(c);
}

inline void cp_async_commit() {
  Thread& t = self();
  t.groups.push_back(std::move(t.open));
  t.open.clear();
}

inline void cp_async_wait(int n) {
  Thread& t = self();
  while (static_cast<int>(t.groups.size()) > n) {
    for (const CpCopy& c : t.groups.front()) retire(c);
    t.groups.pop_front();
  }
}

// The hardware's approximation is off by up to about 2 ulp: a non-integer x gets 2^x moved by
// 2^-22 of itself up or down (by a bit of x), so that results must hold with that error too.
inline float ex2_approx_ftz(float x) {
  float y = std::exp2(x);
  if (std::isfinite(y) && x != std::nearbyint(x)) y *= (float_bits(x) & 1) ? 1.f + 0x1p-22f : 1.f - 0x1p-22f;
  return std::fabs(y) < FLT_MIN ? 0.f * y : y;  // flush denormal results (NaN stays NaN)
}

}  // namespace pdnet_emu
