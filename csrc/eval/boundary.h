// pdnet::eval_frame_counts: the DAVIS J and boundary-F counts of a sequence of binary
// masks, fused on the CPU (see boundary.cpp for the op, boundary_impl.h for the kernel).
#pragma once

#include <cstdint>

#include "../cpu/isa.h"

namespace pdnet::eval {

// Rows 0..6 of the op's output [7, T] (int64).
enum Count : int64_t {
  kInter = 0,      // |P & G|
  kUnion = 1,      // |P | G|
  kPredB = 2,      // boundary pixels of P (seg2bmap)
  kGtB = 3,        // boundary pixels of G
  kPredMatch = 4,  // |B(P) & dilate(B(G))|
  kGtMatch = 5,    // |B(G) & dilate(B(P))|
  kFlicker = 6,    // column t < T - 1: sum over pixels of e^2 between frames t and t + 1; column T - 1: 0
  kCounts = 7,
};

// Everything a thread needs to process frames [t0, t1) of a sequence.
//
// Bit rows: a mask row of W pixels is Wp = ceil(W / 64) words, pixel x is bit x % 64 of
// word x / 64, bits x >= W are 0. The disk of radius r is the union of its rows, row dy
// a segment of half-width widths[dy]; a row's horizontal dilations ("levels", half-width
// level_width[l]) are computed one from another: level l = level src | level src
// shifted by +-shift (exact when shift <= 2 * level_width[src] + 1), level 0 being the
// boundary row itself.
struct Args {
  const uint8_t* pred;  // [T, H, W] bool (any nonzero byte is foreground)
  const uint8_t* gt;    // [T, H, W]
  int64_t T, H, W, Wp;
  int64_t radius;
  int64_t levels;             // number of levels (>= 1)
  const int64_t* step_src;    // [levels], level l >= 1 is computed from level step_src[l]
  const int64_t* step_shift;  // [levels]
  const int64_t* dy_level;    // [radius + 1]: level of the disk's row dy
  int64_t ext;                // words a row's dilation reaches past its set bits: ceil(radius / 64)
  const uint64_t* e_mask;     // [Wp]: bits of pixels x < W - 1 (those with a right neighbour)
  int64_t* counts;            // [7, T], zero-initialised
};

// Scratch words one thread needs (frame_block's buffer).
int64_t scratch_words(const Args& a);

// Frames [t0, t1): every count of those frames, and the flicker of pairs (t, t + 1) for
// t0 - 1 <= t < t1 - 1 (t >= 0), i.e. each frame's pair with the frame before it.
// scratch: scratch_words(a) words, zero-initialised (by the caller, once per thread).
// One function per build of the kernel (the builds: ../cpu/isa.h).
namespace dflt {
void frame_block(const Args& a, int64_t t0, int64_t t1, uint64_t* scratch);
}
#if PDNET_X86_ISA_BUILDS
namespace avx2 {
void frame_block(const Args& a, int64_t t0, int64_t t1, uint64_t* scratch);
}
#endif

}  // namespace pdnet::eval
