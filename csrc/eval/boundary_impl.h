// The fused DAVIS counts kernel (see boundary.h), compiled twice: by boundary.cpp for the
// baseline instruction set (namespace pdnet::eval::dflt) and by boundary_avx2.cpp for the AVX2
// build of ../cpu/isa.h (pdnet::eval::avx2, CPU_CAPABILITY_AVX2 defined). Include it inside
// `namespace pdnet::eval { namespace <isa> { ... } }` after <cstdint>, <cstring> and <utility>.
//
// Per frame (one thread):
//  1. pack both masks into bit rows (64 pixels a word), counting |P & G|, |P|, |G|, and
//     the flicker against the previous frame's packed masks;
//  2. stream over the rows: boundary row y of each mask (the toolkit's seg2bmap: the
//     pixel differs from its right, lower or lower-right neighbour, neighbours outside
//     the image not counting), and its horizontal dilations (one per distinct half-width
//     of the disk's rows), kept for the last min(2r + 1, H) rows in a ring; once rows
//     y - 2r .. y are there, row y - r of each boundary is matched: a word w of it is
//     matched bit by bit against the OR over dy of the other mask's row y - r + dy
//     dilated by the disk's half-width at dy (closest rows first, stopping as soon as
//     every bit of w is covered). Rows and words without boundary pixels cost nothing.
//
// Horizontal dilations are computed on the row's words extended by ceil(r / 64) words on
// each side (kept zero-padded beyond), so that no bit is dropped at the image border
// before the last step: each level is the exact Minkowski sum; bits outside the image
// are never matched (the other boundary has none there).

#ifdef CPU_CAPABILITY_AVX2
// 64 bytes -> 64 bits (bit k = byte k != 0)
static inline uint64_t pack64(const uint8_t* src) {
  const __m256i zero = _mm256_setzero_si256();
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src));
  const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32));
  const uint32_t ma = ~static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(a, zero)));
  const uint32_t mb = ~static_cast<uint32_t>(_mm256_movemask_epi8(_mm256_cmpeq_epi8(b, zero)));
  return static_cast<uint64_t>(ma) | (static_cast<uint64_t>(mb) << 32);
}
#else
static inline uint64_t pack64(const uint8_t* src) {
  uint64_t out = 0;
  for (int k = 0; k < 8; ++k) {
    uint64_t v;
    std::memcpy(&v, src + 8 * k, 8);
    v |= v >> 4;  // bit 0 of each byte = OR of the byte's bits (shifts stay within the byte)
    v |= v >> 2;
    v |= v >> 1;
    v &= 0x0101010101010101ULL;
    out |= ((v * 0x0102040810204080ULL) >> 56) << (8 * k);  // byte k's bit 0 -> bit k
  }
  return out;
}
#endif

static inline int64_t popc(uint64_t x) {
  return __builtin_popcountll(x);
}

// One row of W bytes -> Wp words (zero bits past W).
static inline void pack_row(const uint8_t* src, int64_t W, int64_t Wp, uint64_t* dst) {
  const int64_t full = W / 64;
  for (int64_t j = 0; j < full; ++j) dst[j] = pack64(src + 64 * j);
  if (full < Wp) {  // the last W % 64 pixels, through a zero-padded copy
    alignas(32) uint8_t tail[64] = {};
    std::memcpy(tail, src + 64 * full, static_cast<size_t>(W - 64 * full));
    dst[full] = pack64(tail);
  }
}

// E of a packed row: pixel differs from its right neighbour (none in the last column).
static inline void right_diff(const uint64_t* p, const uint64_t* e_mask, int64_t Wp, uint64_t* e) {
  for (int64_t j = 0; j < Wp; ++j) {
    const uint64_t next = j + 1 < Wp ? p[j + 1] : 0;
    e[j] = (p[j] ^ ((p[j] >> 1) | (next << 63))) & e_mask[j];
  }
}

// dst = src | src moved s pixels towards lower x | src moved s towards higher x, for
// words [0, n) of zero-padded buffers (src readable at [-(s / 64 + 1), n + s / 64 + 1)).
static inline void widen(const uint64_t* src, uint64_t* dst, int64_t n, int64_t s) {
  const int64_t q = s >> 6;
  const int b = static_cast<int>(s & 63);
  if (b == 0) {
    for (int64_t j = 0; j < n; ++j) dst[j] = src[j] | src[j + q] | src[j - q];
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const uint64_t lo = (src[j + q] >> b) | (src[j + q + 1] << (64 - b));  // pixel x takes x + s
      const uint64_t hi = (src[j - q] << b) | (src[j - q - 1] >> (64 - b));  // pixel x takes x - s
      dst[j] = src[j] | lo | hi;
    }
  }
}

inline int64_t ring_rows(const Args& a) {
  return a.H < 2 * a.radius + 1 ? a.H : 2 * a.radius + 1;
}

// Words of a stored level row: the row's words [0, Wp) plus ext words each side that the
// dilation reaches, plus ext + 1 words each side that are never written (always 0) and
// that the shifts read. Word j of the row is at index j + level_offset.
inline int64_t level_words(const Args& a) {
  return a.Wp + 4 * a.ext + 2;
}
inline int64_t level_offset(const Args& a) {
  return 2 * a.ext + 1;
}

// Scratch words (zero-initialised by the caller, once) of block().
inline int64_t block_scratch_words(const Args& a) {
  return 4 * a.H * a.Wp                                 // packed masks: current and previous frame
         + ring_rows(a) * 2 * a.levels * level_words(a)  // ring of boundary rows and their dilations
         + ring_rows(a) * 2 * 2                          // ring: boundary words [lo, hi) of each row
         + 4 * a.Wp;                                     // right-neighbour differences
}

void block(const Args& a, int64_t t0, int64_t t1, uint64_t* scratch) {
  const int64_t H = a.H, W = a.W, Wp = a.Wp, r = a.radius, L = a.levels, ext = a.ext;
  const int64_t frame_words = H * Wp;
  const int64_t R = ring_rows(a);
  const int64_t Wx = level_words(a), off = level_offset(a);
  // scratch layout (words)
  uint64_t* packed[2] = {scratch, scratch + 2 * frame_words};  // [2 masks][H][Wp] each: current, previous
  uint64_t* ring = scratch + 4 * frame_words;                   // [R][2 masks][L levels][Wx]
  int64_t* span = reinterpret_cast<int64_t*>(ring + R * 2 * L * Wx);  // [R][2][lo, hi]
  uint64_t* erows = reinterpret_cast<uint64_t*>(span + R * 2 * 2);    // [2 masks][2][Wp]
  int64_t* counts = a.counts;
  const int64_t T = a.T;

  auto pack_frame = [&](int64_t t, uint64_t* dst, bool count) {
    const uint8_t* p = a.pred + t * H * W;
    const uint8_t* g = a.gt + t * H * W;
    uint64_t* pd = dst;
    uint64_t* gd = dst + frame_words;
    int64_t inter = 0, np = 0, ng = 0;
    for (int64_t y = 0; y < H; ++y) {
      pack_row(p + y * W, W, Wp, pd + y * Wp);
      pack_row(g + y * W, W, Wp, gd + y * Wp);
      if (count) {
        for (int64_t j = y * Wp; j < (y + 1) * Wp; ++j) {
          inter += popc(pd[j] & gd[j]);
          np += popc(pd[j]);
          ng += popc(gd[j]);
        }
      }
    }
    if (count) {
      counts[kInter * T + t] = inter;
      counts[kUnion * T + t] = np + ng - inter;
    }
  };

  for (int64_t t = t0; t < t1; ++t) {
    if (t == t0 && t > 0) pack_frame(t - 1, packed[1], false);
    pack_frame(t, packed[0], true);
    if (t > 0) {
      // e_t = (P_t - P_{t-1}) - (G_t - G_{t-1}): e^2 = 1 when exactly one changed, 4 when
      // both changed in opposite directions (P_t != G_t)
      const uint64_t *p = packed[0], *g = packed[0] + frame_words;
      const uint64_t *pp = packed[1], *gp = packed[1] + frame_words;
      int64_t sq = 0;
      for (int64_t j = 0; j < frame_words; ++j) {
        const uint64_t cp = p[j] ^ pp[j], cg = g[j] ^ gp[j];
        sq += popc(cp ^ cg) + 4 * popc(cp & cg & (p[j] ^ g[j]));
      }
      counts[kFlicker * T + t - 1] = sq;
    }

    const uint64_t* rows[2] = {packed[0], packed[0] + frame_words};
    uint64_t* e_cur[2] = {erows, erows + 2 * Wp};
    uint64_t* e_next[2] = {erows + Wp, erows + 3 * Wp};
    int64_t nb[2] = {0, 0}, nmatch[2] = {0, 0};
    for (int m = 0; m < 2; ++m) right_diff(rows[m], a.e_mask, Wp, e_cur[m]);

    for (int64_t y = 0; y < H + r; ++y) {
      if (y < H) {
        const int64_t slot = y % R;
        for (int m = 0; m < 2; ++m) {
          uint64_t* lev = ring + (slot * 2 + m) * L * Wx + off;  // level l, word j: lev[l * Wx + j]
          int64_t* sp = span + (slot * 2 + m) * 2;
          const uint64_t* row = rows[m] + y * Wp;
          const uint64_t* ec = e_cur[m];
          uint64_t* en = e_next[m];
          int64_t lo = Wp, hi = 0, n = 0;
          for (int64_t j = 0; j < Wp; ++j) {
            uint64_t v = ec[j];
            if (y + 1 < H) {  // (E | V | E below) of rows y, y + 1
              const uint64_t* below = row + Wp;
              const uint64_t next = j + 1 < Wp ? below[j + 1] : 0;
              en[j] = (below[j] ^ ((below[j] >> 1) | (next << 63))) & a.e_mask[j];
              v |= (row[j] ^ below[j]) | en[j];
            }
            lev[j] = v;
            if (v) {
              lo = lo < j ? lo : j;
              hi = j + 1;
              n += popc(v);
            }
          }
          std::swap(e_cur[m], e_next[m]);
          nb[m] += n;
          sp[0] = lo;
          sp[1] = hi;
          if (n == 0) continue;  // the stale levels of this slot are never read
          // levels on words [-ext, Wp + ext): every bit of the dilation, none dropped
          for (int64_t l = 1; l < L; ++l) {
            widen(lev + a.step_src[l] * Wx - ext, lev + l * Wx - ext, Wp + 2 * ext, a.step_shift[l]);
          }
        }
      }
      const int64_t yc = y - r;  // rows yc - r .. yc + r of both masks are in the ring
      if (yc < 0) continue;
      const int64_t slot = yc % R;  // row yc +- d is in slot +- d, modulo R (d <= r < R, or R = H)
      for (int m = 0; m < 2; ++m) {
        const int64_t* sp = span + (slot * 2 + m) * 2;
        if (sp[1] <= sp[0]) continue;
        const uint64_t* b = ring + (slot * 2 + m) * L * Wx + off;
        const int o = 1 - m;
        for (int64_t j = sp[0]; j < sp[1]; ++j) {
          const uint64_t w = b[j];
          if (w == 0) continue;
          uint64_t acc = 0;
          for (int64_t d = 0; d <= r && (w & ~acc) != 0; ++d) {
            for (int side = 0; side < (d == 0 ? 1 : 2); ++side) {
              const int64_t yy = side == 0 ? yc + d : yc - d;
              if (yy < 0 || yy >= H) continue;
              int64_t s2 = side == 0 ? slot + d : slot - d;
              s2 += s2 >= R ? -R : (s2 < 0 ? R : 0);
              const int64_t* so = span + (s2 * 2 + o) * 2;
              if (so[1] <= so[0]) continue;  // no boundary in that row
              acc |= ring[((s2 * 2 + o) * L + a.dy_level[d]) * Wx + off + j];
            }
          }
          nmatch[m] += popc(w & acc);
        }
      }
    }
    counts[kPredB * T + t] = nb[0];
    counts[kGtB * T + t] = nb[1];
    counts[kPredMatch * T + t] = nmatch[0];
    counts[kGtMatch * T + t] = nmatch[1];
    std::swap(packed[0], packed[1]);
  }
}
