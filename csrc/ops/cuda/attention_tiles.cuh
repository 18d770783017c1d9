// Building blocks of the part_attention CUDA kernels.
//
// * WarpTile<T, N>: a 16 x N float32 accumulator owned by one warp, updated with
//   C += op(A)[16 x K] * op(B)[K x N] from operands in shared memory. For float16 and
//   bfloat16 it is a row of 16x16 WMMA accumulator fragments (tensor cores, m16n16k16,
//   fp32 accumulate); for float32 it is plain FMA, lane (rh, cl) holding rows
//   rh*8 .. rh*8+7 and columns cl, cl+16, ...
//   Layouts: A(m, k) = a[m * lda + k] (row-major), or a[k * lda + m] when TA;
//            B(k, n) = b[k * ldb + n] (row-major), or b[n * ldb + k] when TB.
// * AttnCfg<T, D>: tile sizes and shared-memory layouts per storage type and head dim
//   (D = 32, 64, 128: the head dim rounded up; padding columns are zero), chosen so
//   that every configuration fits the 99 KB a block may use on sm_86.
// * load_rows: a [ROWS x D] tile from a row-major [n x d] global array into shared
//   memory, zero-filled past the n rows and d columns, 16-byte loads when possible;
//   load_mask_tile: the key mask of a tile, in the log2 domain.
#pragma once

#include <mma.h>

#include <type_traits>

#include "cuda_utils.cuh"

namespace pdnet::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <typename T>
constexpr bool kUseMma = !std::is_same<T, float>::value;

// max(a, b) that returns NaN when either is NaN (fmaxf returns the other operand), so
// that a NaN score reaches the row's running max, sum and output as in the reference
__device__ __forceinline__ float max_nan(float a, float b) {
  return (a > b || a != a) ? a : b;
}

// ---------------------------------------------------------------------------------
// WarpTile

template <typename T, int N, bool MMA = kUseMma<T>>
struct WarpTile;

// tensor cores (T = __half or __nv_bfloat16)
template <typename T, int N>
struct WarpTile<T, N, true> {
  static_assert(N % 16 == 0, "WarpTile: N must be a multiple of 16");
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> c[N / 16];

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int n = 0; n < N / 16; ++n) nvcuda::wmma::fill_fragment(c[n], 0.f);
  }
  __device__ __forceinline__ void load(const float* p, int ld) {
#pragma unroll
    for (int n = 0; n < N / 16; ++n) nvcuda::wmma::load_matrix_sync(c[n], p + 16 * n, ld, nvcuda::wmma::mem_row_major);
  }
  __device__ __forceinline__ void store(float* p, int ld) const {
#pragma unroll
    for (int n = 0; n < N / 16; ++n) nvcuda::wmma::store_matrix_sync(p + 16 * n, c[n], ld, nvcuda::wmma::mem_row_major);
  }
  template <int K, bool TA, bool TB>
  __device__ __forceinline__ void mma(const T* a, int lda, const T* b, int ldb) {
    static_assert(K % 16 == 0, "WarpTile::mma: K must be a multiple of 16");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap();  // built for sm_80+ only (bf16 WMMA); the host side checks the device
#else
    using LA = typename std::conditional<TA, nvcuda::wmma::col_major, nvcuda::wmma::row_major>::type;
    using LB = typename std::conditional<TB, nvcuda::wmma::col_major, nvcuda::wmma::row_major>::type;
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
      nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, T, LA> fa;
      nvcuda::wmma::load_matrix_sync(fa, TA ? a + kk * 16 * lda : a + kk * 16, lda);
#pragma unroll
      for (int n = 0; n < N / 16; ++n) {
        nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, T, LB> fb;
        nvcuda::wmma::load_matrix_sync(fb, TB ? b + n * 16 * ldb + kk * 16 : b + kk * 16 * ldb + n * 16, ldb);
        nvcuda::wmma::mma_sync(c[n], fa, fb, c[n]);
      }
    }
#endif
  }
};

// plain FMA (T = float)
template <typename T, int N>
struct WarpTile<T, N, false> {
  static_assert(N % 16 == 0, "WarpTile: N must be a multiple of 16");
  float c[8][N / 16];

  __device__ __forceinline__ int row0() const { return (threadIdx.x & 31) >> 4 << 3; }
  __device__ __forceinline__ int col0() const { return threadIdx.x & 15; }

  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < N / 16; ++j) c[i][j] = 0.f;
  }
  __device__ __forceinline__ void load(const float* p, int ld) {
    const int r0 = row0(), c0 = col0();
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < N / 16; ++j) c[i][j] = p[(r0 + i) * ld + c0 + 16 * j];
  }
  __device__ __forceinline__ void store(float* p, int ld) const {
    const int r0 = row0(), c0 = col0();
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < N / 16; ++j) p[(r0 + i) * ld + c0 + 16 * j] = c[i][j];
  }
  template <int K, bool TA, bool TB>
  __device__ __forceinline__ void mma(const float* a, int lda, const float* b, int ldb) {
    const int r0 = row0(), c0 = col0();
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
      float av[8], bv[N / 16];
#pragma unroll
      for (int i = 0; i < 8; ++i) av[i] = TA ? a[k * lda + r0 + i] : a[(r0 + i) * lda + k];
#pragma unroll
      for (int j = 0; j < N / 16; ++j) bv[j] = TB ? b[(c0 + 16 * j) * ldb + k] : b[k * ldb + c0 + 16 * j];
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < N / 16; ++j) c[i][j] = fmaf(av[i], bv[j], c[i][j]);
    }
  }
};

// ---------------------------------------------------------------------------------
// Configurations and shared-memory layouts

__host__ __device__ constexpr int round128(int bytes) {
  return (bytes + 127) / 128 * 128;
}

template <typename T, int D>
struct AttnCfg {
  static constexpr bool kMma = kUseMma<T>;
  static constexpr int kT = sizeof(T);
  // leading dims: 16-byte multiples for WMMA; odd (bank-conflict free) for the FMA path
  static constexpr int LDT = kMma ? D + 8 : D + 1;  // rows of q, k, v, dO tiles (T)
  static constexpr int LDD = kMma ? D + 4 : D + 1;  // float rows of D columns (O, dQ, dK, dV)

  // forward: BM queries per block (NW = BM / 16 warps, a warp owns 16 query rows), key tiles of BN
  static constexpr int FWD_BM = (!kMma && D == 128) ? 32 : 64;
  static constexpr int FWD_BN = (D == 128 || (!kMma && D == 64)) ? 32 : 64;
  static constexpr int FWD_LDS = kMma ? FWD_BN + 4 : FWD_BN + 1;  // scores (float)
  static constexpr int FWD_LDP = kMma ? FWD_BN + 8 : FWD_LDS;     // probabilities (T; float: in place)
  static constexpr int FWD_Q = 0;
  static constexpr int FWD_K = FWD_Q + round128(FWD_BM * LDT * kT);
  static constexpr int FWD_V = FWD_K + round128(FWD_BN * LDT * kT);
  static constexpr int FWD_S = FWD_V + round128(FWD_BN * LDT * kT);
  static constexpr int FWD_P = FWD_S + round128(FWD_BM * FWD_LDS * 4);
  static constexpr int FWD_O = FWD_P + (kMma ? round128(FWD_BM * FWD_LDP * kT) : 0);
  static constexpr int FWD_MASK = FWD_O + round128(FWD_BM * LDD * 4);
  static constexpr int FWD_ROW = FWD_MASK + round128(FWD_BN * 4);
  static constexpr int FWD_SMEM = FWD_ROW + round128(FWD_BM * 4);

  // backward: BN keys per block (NW = BN / 16 warps, a warp owns 16 keys), query tiles of BM
  static constexpr int BWD_BN = D == 128 ? 32 : 64;
  static constexpr int BWD_BM = D >= 64 ? 32 : 64;
  static constexpr int BWD_LDS = kMma ? BWD_BM + 4 : BWD_BM + 1;  // S^T, dP^T (float)
  static constexpr int BWD_LDP = kMma ? BWD_BM + 8 : BWD_LDS;     // P^T, dS^T (T; float: in place)
  static constexpr int BWD_K = 0;
  static constexpr int BWD_V = BWD_K + round128(BWD_BN * LDT * kT);
  static constexpr int BWD_Q = BWD_V + round128(BWD_BN * LDT * kT);
  static constexpr int BWD_DO = BWD_Q + round128(BWD_BM * LDT * kT);
  static constexpr int BWD_S = BWD_DO + round128(BWD_BM * LDT * kT);
  static constexpr int BWD_DP = BWD_S + round128(BWD_BN * BWD_LDS * 4);
  static constexpr int BWD_PT = BWD_DP + round128(BWD_BN * BWD_LDS * 4);
  static constexpr int BWD_DST = BWD_PT + (kMma ? round128(BWD_BN * BWD_LDP * kT) : 0);
  static constexpr int BWD_DQ = BWD_DST + (kMma ? round128(BWD_BN * BWD_LDP * kT) : 0);
  static constexpr int BWD_LSE = BWD_DQ + round128(BWD_BM * LDD * 4);
  static constexpr int BWD_DELTA = BWD_LSE + round128(BWD_BM * 4);
  static constexpr int BWD_MASK = BWD_DELTA + round128(BWD_BM * 4);
  static constexpr int BWD_LOOP_SMEM = BWD_MASK + round128(BWD_BN * 4);
  static constexpr int BWD_EPI_SMEM = round128(BWD_BN * LDD * 4);  // dK / dV staging
  static constexpr int BWD_SMEM = BWD_LOOP_SMEM > BWD_EPI_SMEM ? BWD_LOOP_SMEM : BWD_EPI_SMEM;

  static_assert(FWD_SMEM <= 101376 && BWD_SMEM <= 101376, "tiles must fit sm_86's 99 KB");
  static_assert(FWD_BM % 16 == 0 && FWD_BN % 16 == 0 && BWD_BM % 16 == 0 && BWD_BN % 16 == 0, "");
};

// ---------------------------------------------------------------------------------
// Global -> shared tile loads

// dst[r * LD + c] = src[(row0 + r) * d + c] for r < ROWS, c < D; zero past n rows / d columns.
// vec16: d == D, and src plus every row start are 16-byte aligned.
template <typename T, int ROWS, int D, int LD>
__device__ __forceinline__ void load_rows(T* dst, const T* src, int64_t row0, int64_t n, int d, bool vec16) {
  constexpr int kE = 16 / sizeof(T);  // elements per 16 bytes
  if (vec16) {
    constexpr int kChunks = ROWS * D / kE;
    for (int idx = threadIdx.x; idx < kChunks; idx += blockDim.x) {
      const int r = idx / (D / kE), c = (idx % (D / kE)) * kE;
      const int64_t row = row0 + r;
      uint4 val = make_uint4(0u, 0u, 0u, 0u);
      if (row < n) val = *reinterpret_cast<const uint4*>(src + row * D + c);
      if constexpr ((LD * sizeof(T)) % 16 == 0) {
        *reinterpret_cast<uint4*>(dst + r * LD + c) = val;
      } else {
        const T* e = reinterpret_cast<const T*>(&val);
#pragma unroll
        for (int u = 0; u < kE; ++u) dst[r * LD + c + u] = e[u];
      }
    }
  } else {
    for (int idx = threadIdx.x; idx < ROWS * D; idx += blockDim.x) {
      const int r = idx / D, c = idx % D;
      const int64_t row = row0 + r;
      dst[r * LD + c] = (row < n && c < d) ? src[row * d + c] : from_float<T>(0.f);
    }
  }
}

// sMask[j] = mask[n0 + j] * log2(e) (0 without a mask) for the BN keys of the tile at n0;
// -inf past the Nk keys, so that padding keys get no weight.
template <int BN>
__device__ __forceinline__ void load_mask_tile(float* sMask, const float* mask, int64_t n0, int64_t Nk) {
  for (int j = threadIdx.x; j < BN; j += blockDim.x) {
    const int64_t key = n0 + j;
    sMask[j] = key < Nk ? (mask != nullptr ? mask[key] * kLog2e : 0.f) : -INFINITY;
  }
}

// Moves every pointer by offset elements: from a [BH, ...] array to the rows of one head.
template <typename... Ptrs>
__device__ __forceinline__ void offset_all(int64_t offset, Ptrs&... ptrs) {
  ((ptrs += offset), ...);
}

}  // namespace pdnet::cuda

// ---------------------------------------------------------------------------------
// Host helpers shared by the forward and backward launchers

namespace pdnet::cuda {

// f(std::integral_constant<int, D>) with D the head dim d rounded up to 32, 64 or 128.
// d <= 16 takes the D = 32 kernels (zero padding columns) rather than kernels of its own:
// one instantiation fewer per dtype and direction in the build, for a head dim the model
// does not use (it uses 32).
template <typename F>
inline void dispatch_head_dim(const char* where, int64_t d, F&& f) {
  if (d <= 32) {
    f(std::integral_constant<int, 32>{});
  } else if (d <= 64) {
    f(std::integral_constant<int, 64>{});
  } else if (d <= 128) {
    f(std::integral_constant<int, 128>{});
  } else {
    TORCH_CHECK(false, where, ": head dim d = ", d, " is above the 128 the CUDA kernel supports");
  }
}

// every tensor's data starts on a 16-byte boundary
template <typename... Tensors>
inline bool aligned16(const Tensors&... ts) {
  return ((reinterpret_cast<uintptr_t>(ts.const_data_ptr()) % 16 == 0) && ...);
}

// kernel<<<blocks, threads, smem_bytes>>>(args...) on the current stream, then the launch check:
// after checking the grid size (`what` names the tensor it comes from, for the error), the
// device's compute capability and its shared memory, and opting the kernel into smem_bytes of
// dynamic shared memory when that is above the default 48 KB.
template <typename... Params, typename... Args>
inline void launch_with_smem(const char* where, const at::Tensor& what, void (*kernel)(Params...), int64_t blocks,
                             int threads, int smem_bytes, Args... args) {
  TORCH_CHECK(blocks < (int64_t(1) << 31), where, ": too many blocks for ", pdnet::ops::detail::describe(what));
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  TORCH_CHECK(prop->major >= 8, where, ": the CUDA kernels need compute capability 8.0 or newer, ", prop->name, " has ",
              prop->major, ".", prop->minor);
  TORCH_CHECK(static_cast<size_t>(smem_bytes) <= prop->sharedMemPerBlockOptin, where, ": needs ", smem_bytes,
              " bytes of shared memory per block, ", prop->name, " offers ", prop->sharedMemPerBlockOptin);
  if (smem_bytes > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes));
  }
  kernel<<<static_cast<unsigned>(blocks), threads, smem_bytes, at::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace pdnet::cuda
