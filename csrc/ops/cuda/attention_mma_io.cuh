// Global <-> shared-memory staging shared by the tensor-core attention kernels
// (part_attention_fwd_mma.cuh, part_attention_bwd_mma.cuh): row tiles in by cp.async, a warp's
// float32 accumulator rows out through shared memory, and the storage type's C++ name for the
// launch-shape record (kernel_smem.h). Shared tiles have the row stride D + 8 elements of
// mma_sm80.cuh's loaders.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "attention_tiles.cuh"
#include "mma_sm80.cuh"

namespace pdnet::cuda::mma_io {

// dst[r * (D + 8) + c] = src[(row0 + r) * d + c] for r < ROWS, c < D; zero past the n rows and
// the d columns. vec16 (d == D and src's rows start on 16-byte boundaries): cp.async of 16-byte
// chunks issued by this thread (rows past n zero-filled), which the caller commits and waits for;
// otherwise synchronous element-wise copies, visible after the caller's next __syncthreads.
template <typename T, int ROWS, int D, int THREADS>
__device__ __forceinline__ void load_tile(T* dst, const T* src, int64_t row0, int64_t n, int d, bool vec16) {
  constexpr int LD = D + 8;
  constexpr int kE = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte chunk
  constexpr int kPerRow = D / kE;                       // chunks per row
  static_assert(ROWS * kPerRow % THREADS == 0, "load_tile: the same number of chunks for every thread");
  if (vec16) {
#pragma unroll
    for (int i = 0; i < ROWS * kPerRow / THREADS; ++i) {
      const int idx = static_cast<int>(threadIdx.x) + i * THREADS;
      const int r = idx / kPerRow, c = (idx % kPerRow) * kE;
      const bool live = row0 + r < n;
      // a dead row reads nothing, but its source address must be valid: row 0 (n >= 1)
      mma::cp_async_16(dst + r * LD + c, live ? src + (row0 + r) * D + c : src, live);
    }
  } else {
    load_rows<T, ROWS, D, LD>(dst, src, row0, n, d, false);
  }
}

// A warp's [16 x D] float32 accumulator (acc[j]: the C fragment of columns 8j .. 8j + 7) times
// scale, rounded to T, into rows row0 .. row0 + 15 (those below n) of the row-major [n x d] array
// dst, staged in `stage`: 16 rows of shared memory (stride D + 8) that only this warp uses.
// vec16: d == D and dst's rows start on 16-byte boundaries (16-byte stores, whole rows per 4
// lanes at D = 32). scale 1 stores the accumulator as it is (x * 1 is x).
template <typename T, int D>
__device__ __forceinline__ void store_warp_rows(const float (&acc)[D / 8][4], float scale, T* stage, T* dst,
                                                int64_t row0, int64_t n, int d, bool vec16) {
  constexpr int LD = D + 8;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  __syncwarp();  // the warp's earlier reads of the staging rows are done
#pragma unroll
  for (int j = 0; j < D / 8; ++j) {  // C layout: c[0], c[1] at (g, 8j + 2t, +1); c[2], c[3] at row g + 8
    *reinterpret_cast<uint32_t*>(stage + g * LD + 8 * j + 2 * t) = mma::pack2<T>(acc[j][0] * scale, acc[j][1] * scale);
    *reinterpret_cast<uint32_t*>(stage + (g + 8) * LD + 8 * j + 2 * t) =
        mma::pack2<T>(acc[j][2] * scale, acc[j][3] * scale);
  }
  __syncwarp();
  if (vec16) {
    constexpr int kE = 16 / static_cast<int>(sizeof(T)), kPerRow = D / kE;
    static_assert(16 * kPerRow % 32 == 0, "store_warp_rows: the same number of chunks for every lane");
#pragma unroll
    for (int i = 0; i < 16 * kPerRow / 32; ++i) {
      const int idx = lane + 32 * i;
      const int r = idx / kPerRow, c = (idx % kPerRow) * kE;
      if (row0 + r < n) {
        *reinterpret_cast<uint4*>(dst + (row0 + r) * D + c) = *reinterpret_cast<const uint4*>(stage + r * LD + c);
      }
    }
  } else {
    for (int idx = lane; idx < 16 * d; idx += 32) {
      const int r = idx / d, c = idx - r * d;
      if (row0 + r < n) dst[(row0 + r) * d + c] = stage[r * LD + c];
    }
  }
}

// the storage type as kernel names spell it in the launch-shape record
template <typename T>
constexpr const char* type_name() {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value, "float16 or bfloat16");
  return std::is_same<T, __half>::value ? "__half" : "__nv_bfloat16";
}

}  // namespace pdnet::cuda::mma_io
