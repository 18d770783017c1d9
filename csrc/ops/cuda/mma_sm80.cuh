// Warp-level tensor-core primitives for sm_80 and newer, written as inline PTX: mma.sync
// m16n8k16 (float16 / bfloat16 operands, float32 accumulation), ldmatrix, cp.async, ex2; plus
// the register layouts of their fragments, on which the attention kernels' index arithmetic
// rests. Every function is warp-collective unless it says otherwise: all 32 lanes call it
// with the same control flow.
//
// Fragment layouts of mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 (PTX ISA,
// "Matrix fragments for mma.m16n8k16 with floating point type"), with g = lane / 4 and
// t = lane % 4. A register of 16-bit pairs holds the lower column (or k) index in its low half.
//   A, 16 x 16 (m x k):  a[0] = (g, 2t..2t+1)      a[1] = (g + 8, 2t..2t+1)
//                        a[2] = (g, 2t+8..2t+9)    a[3] = (g + 8, 2t+8..2t+9)
//   B, 16 x 8  (k x n):  b[0] = (k = 2t..2t+1, n = g)   b[1] = (k = 2t+8..2t+9, n = g)
//   C, 16 x 8  (m x n):  c[0], c[1] = (g, 2t), (g, 2t+1)    c[2], c[3] = (g + 8, 2t), (g + 8, 2t+1)
// Hence the accumulators of two neighbouring n-tiles j = 2kk, 2kk+1 of a product S = X Y, rounded
// to 16 bits, are the A fragment of S's columns 16kk .. 16kk+15 for a next product S Z:
//   a = {pack(c_j[0], c_j[1]), pack(c_j[2], c_j[3]), pack(c_j+1[0], c_j+1[1]), pack(c_j+1[2], c_j+1[3])}
// (c_to_a below). A row of a C tile lives in the 4 lanes of one group (same g): row reductions
// are the lane's two values, then __shfl_xor_sync over lane masks 1 and 2.
//
// ldmatrix.x4 loads four 8 x 8 matrices of 16-bit elements from shared memory; lanes 8i .. 8i+7
// give the addresses of the 8 rows of matrix i (16 contiguous bytes each, 16-byte aligned), and
// register i of lane l receives matrix i's (row l / 4, columns 2(l % 4), 2(l % 4) + 1) -- or,
// with .trans, its (rows 2(l % 4), 2(l % 4) + 1, column l / 4). The loaders below map the
// four matrices onto the fragments above for the three storage orders the kernels use.
// Shared-memory tiles are row-major with a leading dimension of D + 8 elements (a 16-byte pad):
// the 8 row addresses of one 8 x 8 matrix then fall in 8 distinct groups of 4 banks.
//
// Compiled as host C++ with PDNET_CUDA_EMULATION defined (tests/cuda_emu), each primitive calls the
// CPU emulator's version of its instruction instead of the inline PTX.
#pragma once

#ifdef PDNET_CUDA_EMULATION
#include "cuda_emu.h"
#endif
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace pdnet::cuda::mma {

// shared-memory address of a generic pointer into shared memory (for ldmatrix, cp.async)
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// ---------------------------------------------------------------------------------
// 16-bit pairs

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);  // .x = lo: the low 16 bits
  return *reinterpret_cast<uint32_t*>(&h);
}
template <>
__device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&h);
}

// the C fragments c0 (columns 0..7) and c1 (columns 8..15) of a 16 x 16 block, as an A fragment
template <typename T>
__device__ __forceinline__ void c_to_a(uint32_t a[4], const float c0[4], const float c1[4]) {
  a[0] = pack2<T>(c0[0], c0[1]);
  a[1] = pack2<T>(c0[2], c0[3]);
  a[2] = pack2<T>(c1[0], c1[1]);
  a[3] = pack2<T>(c1[2], c1[3]);
}

// ---------------------------------------------------------------------------------
// mma.sync: c += A B, A 16 x 16, B 16 x 8, c 16 x 8 in float32

template <typename T>
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2]) {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                "mma16816: float16 or bfloat16 operands");
#if defined(PDNET_CUDA_EMULATION)
  pdnet_emu::mma16816<T>(c, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, __half>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#else
  __trap();  // built for sm_80+ only; the host checks the device's compute capability
#endif
}

// ---------------------------------------------------------------------------------
// ldmatrix

#ifdef PDNET_CUDA_EMULATION
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], uint32_t addr) {
  pdnet_emu::ldmatrix_x4(r, addr, false);
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], uint32_t addr) {
  pdnet_emu::ldmatrix_x4(r, addr, true);
}
#else
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
#endif

// A fragment of the 16 x 16 block at (row0, col0) of a row-major tile: A(m, k) = tile[(row0 + m) * ld + col0 + k].
// Matrices: 0 = rows 0-7 / cols 0-7, 1 = rows 8-15 / cols 0-7, 2 = rows 0-7 / cols 8-15, 3 = rows 8-15 / cols 8-15.
template <typename T>
__device__ __forceinline__ void load_a(uint32_t a[4], const T* tile, int ld, int row0, int col0) {
  const int lane = threadIdx.x & 31;
  ldmatrix_x4(a, smem_addr(tile + (row0 + (lane & 15)) * ld + col0 + ((lane >> 4) << 3)));
}

// B fragments of two n-tiles (n0 .. n0+7, n0+8 .. n0+15) and k0 .. k0+15 of B(k, n) = tile[n * ld + k]
// (a row-major [n][k] tile, e.g. K for S = Q K^T): b[j] is the fragment of n-tile j.
// Matrices: 0 = n 0-7 / k 0-7, 1 = n 0-7 / k 8-15, 2 = n 8-15 / k 0-7, 3 = n 8-15 / k 8-15.
template <typename T>
__device__ __forceinline__ void load_b_nk(uint32_t b[2][2], const T* tile, int ld, int n0, int k0) {
  const int lane = threadIdx.x & 31;
  uint32_t r[4];
  ldmatrix_x4(r, smem_addr(tile + (n0 + (lane & 7) + ((lane >> 4) << 3)) * ld + k0 + (((lane >> 3) & 1) << 3)));
  b[0][0] = r[0];
  b[0][1] = r[1];
  b[1][0] = r[2];
  b[1][1] = r[3];
}

// B fragments of two n-tiles (n0 .. n0+15) and k0 .. k0+15 of B(k, n) = tile[k * ld + n]
// (a row-major [k][n] tile, e.g. V for O = P V), through ldmatrix.trans.
// Matrices: 0 = k 0-7 / n 0-7, 1 = k 8-15 / n 0-7, 2 = k 0-7 / n 8-15, 3 = k 8-15 / n 8-15.
template <typename T>
__device__ __forceinline__ void load_b_kn(uint32_t b[2][2], const T* tile, int ld, int k0, int n0) {
  const int lane = threadIdx.x & 31;
  uint32_t r[4];
  ldmatrix_x4_trans(r, smem_addr(tile + (k0 + (lane & 7) + (((lane >> 3) & 1) << 3)) * ld + n0 + ((lane >> 4) << 3)));
  b[0][0] = r[0];
  b[0][1] = r[1];
  b[1][0] = r[2];
  b[1][1] = r[3];
}

// ---------------------------------------------------------------------------------
// cp.async (per thread): 16 bytes global -> shared, bypassing L1; zero-filled when !pred
// (src is then not read, but must still be a valid address).

__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, bool pred) {
  const int bytes = pred ? 16 : 0;
#ifdef PDNET_CUDA_EMULATION
  pdnet_emu::cp_async_16(smem_addr(smem_dst), gmem_src, bytes);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem_dst)), "l"(gmem_src), "r"(bytes));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#ifdef PDNET_CUDA_EMULATION
  pdnet_emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// wait until at most N of this thread's committed groups are still in flight
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef PDNET_CUDA_EMULATION
  pdnet_emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// ---------------------------------------------------------------------------------
// 2^x with the multi-function unit (ex2.approx.ftz: 2 ulp; 2^-inf = 0, NaN stays NaN, denormal
// results flush to 0). Per thread.
__device__ __forceinline__ float exp2_approx(float x) {
#ifdef PDNET_CUDA_EMULATION
  return pdnet_emu::ex2_approx_ftz(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#endif
}

}  // namespace pdnet::cuda::mma
