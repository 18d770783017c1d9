// Building blocks of the part_attention CUDA kernels: the float32 kernels' tiles (FMA), and what
// every attention kernel shares (the float16 / bfloat16 tensor-core kernels of
// part_attention_fwd_mma.cuh and part_attention_bwd_mma.cuh use kLog2e, kLn2, max_nan, round128,
// load_rows and the host helpers at the end).
//
// * WarpTile<float, N>: a 16 x N float32 accumulator owned by one warp, updated with
//   C += op(A)[16 x K] * op(B)[K x N] (plain FMA) from operands in shared memory; lane
//   (rh, cl) = (lane / 16, lane % 16) holds rows rh*8 .. rh*8+7 and columns cl, cl+16, ...
//   Layouts: A(m, k) = a[m * lda + k] (row-major), or a[k * lda + m] when TA;
//            B(k, n) = b[k * ldb + n] (row-major), or b[n * ldb + k] when TB.
// * AttnCfg<float, D>: the float32 kernels' tile sizes and shared-memory layouts per head dim
//   (D = 32, 64, 128: the head dim rounded up; padding columns are zero), chosen so that every
//   configuration fits the 99 KB a block may use on sm_86.
// * load_rows: a [ROWS x D] tile from a row-major [n x d] global array into shared
//   memory, zero-filled past the n rows and d columns, 16-byte loads when possible;
//   load_mask_tile: the key mask of a tile, in the log2 domain.
#pragma once

#include <type_traits>

#include "cuda_utils.cuh"

namespace pdnet::cuda {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// max(a, b) that returns NaN when either is NaN (fmaxf returns the other operand), so
// that a NaN score reaches the row's running max, sum and output as in the reference
__device__ __forceinline__ float max_nan(float a, float b) {
  return (a > b || a != a) ? a : b;
}

// ---------------------------------------------------------------------------------
// WarpTile

template <typename T, int N>
struct WarpTile {
  static_assert(std::is_same<T, float>::value, "WarpTile: float32 (float16 / bfloat16 run on tensor cores)");
  static_assert(N % 16 == 0, "WarpTile: N must be a multiple of 16");
  float c[8][N / 16];  // c[i][j] = C(row0() + i, col0() + 16 j)

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
  // dst[(first_row + r) * d + c] = C(r, c) * scale for the rows with first_row + r < n and the
  // columns c < d of a row-major [n x d] global array (x * 1.f is x exactly)
  __device__ __forceinline__ void store_rows(float* dst, int64_t first_row, int64_t n, int d, float scale) const {
    const int r0 = row0(), c0 = col0();
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t row = first_row + r0 + i;
      if (row >= n) continue;
#pragma unroll
      for (int j = 0; j < N / 16; ++j) {
        if (c0 + 16 * j < d) dst[row * d + c0 + 16 * j] = c[i][j] * scale;
      }
    }
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

// Shared memory of a float32 backward kernel, and its tiles once bound to the block's memory:
// q and dO tiles of BM rows and k and v tiles of BN rows ([rows, D + 1]: odd strides, see AttnCfg),
// NS float tiles of SR x SC (stride SC + 1), and lse * log2 e, delta per query and mask * log2 e
// per key.
template <int D, int BM, int BN, int NS, int SR, int SC>
struct AttnBwdSmem {
  static constexpr int LDT = D + 1, LDS = SC + 1;
  static constexpr int kQ = 0;
  static constexpr int kDO = kQ + round128(BM * LDT * 4);
  static constexpr int kK = kDO + round128(BM * LDT * 4);
  static constexpr int kV = kK + round128(BN * LDT * 4);
  static constexpr int kS = kV + round128(BN * LDT * 4);
  static constexpr int kSBytes = round128(SR * LDS * 4);  // per float tile
  static constexpr int kLse = kS + NS * kSBytes;
  static constexpr int kDelta = kLse + round128(BM * 4);
  static constexpr int kMask = kDelta + round128(BM * 4);
  static constexpr int kBytes = kMask + round128(BN * 4);

  float *q, *dout, *k, *v;  // [BM, LDT], [BM, LDT], [BN, LDT], [BN, LDT]
  float* s[NS];             // [SR, LDS] each
  float *lse, *delta, *mask;  // [BM], [BM], [BN]
  __device__ __forceinline__ explicit AttnBwdSmem(unsigned char* smem)
      : q(reinterpret_cast<float*>(smem + kQ)),
        dout(reinterpret_cast<float*>(smem + kDO)),
        k(reinterpret_cast<float*>(smem + kK)),
        v(reinterpret_cast<float*>(smem + kV)),
        lse(reinterpret_cast<float*>(smem + kLse)),
        delta(reinterpret_cast<float*>(smem + kDelta)),
        mask(reinterpret_cast<float*>(smem + kMask)) {
#pragma unroll
    for (int i = 0; i < NS; ++i) s[i] = reinterpret_cast<float*>(smem + kS + i * kSBytes);
  }
};

template <typename T, int D>
struct AttnCfg {
  static_assert(std::is_same<T, float>::value, "AttnCfg: float32 (float16 / bfloat16: the *_mma.cuh kernels)");
  // odd leading dims (in floats): a warp's column walks hit 32 distinct banks
  static constexpr int LDT = D + 1;  // rows of the q, k, v, dO tiles
  static constexpr int LDD = D + 1;  // rows of the forward's O accumulator
  static constexpr int kT = sizeof(float);

  // forward: BM queries per block (NW = BM / 16 warps, a warp owns 16 query rows), key tiles of BN;
  // the probabilities overwrite the scores
  static constexpr int FWD_BM = D == 128 ? 32 : 64;
  static constexpr int FWD_BN = D >= 64 ? 32 : 64;
  static constexpr int FWD_LDS = FWD_BN + 1;  // scores, then probabilities (float)
  static constexpr int FWD_Q = 0;
  static constexpr int FWD_K = FWD_Q + round128(FWD_BM * LDT * kT);
  static constexpr int FWD_V = FWD_K + round128(FWD_BN * LDT * kT);
  static constexpr int FWD_S = FWD_V + round128(FWD_BN * LDT * kT);
  static constexpr int FWD_O = FWD_S + round128(FWD_BM * FWD_LDS * 4);
  static constexpr int FWD_MASK = FWD_O + round128(FWD_BM * LDD * 4);
  static constexpr int FWD_ROW = FWD_MASK + round128(FWD_BN * 4);
  static constexpr int FWD_SMEM = FWD_ROW + round128(FWD_BM * 4);

  // backward: two kernels, each on an AttnBwdSmem layout.
  // dK / dV (attn_bwd_dkdv_kernel): BN keys per block, a warp owns 16 keys (BWD_THREADS = 2 BN),
  // query tiles of BM; S^T and dP^T [BN x BM] go through shared memory, P^T and dS^T in their place.
  static constexpr int BWD_BN = D == 128 ? 32 : 64;
  static constexpr int BWD_BM = D >= 64 ? 32 : 64;
  static constexpr int BWD_THREADS = BWD_BN * 2;
  using BwdSmem = AttnBwdSmem<D, BWD_BM, BWD_BN, 2, BWD_BN, BWD_BM>;
  static constexpr int BWD_SMEM = BwdSmem::kBytes;

  // dQ (attn_bwd_dq_kernel): DQ_BM queries per block, a warp owns 16 queries (DQ_THREADS =
  // 2 DQ_BM), key tiles of DQ_BN; S, dP and dS stay in registers, dS [DQ_BM x DQ_BN] goes through
  // shared memory as the A operand of dS K.
  static constexpr int DQ_BM = D == 128 ? 32 : 64;
  static constexpr int DQ_BN = D == 32 ? 64 : 32;
  static constexpr int DQ_THREADS = DQ_BM * 2;
  using DqSmem = AttnBwdSmem<D, DQ_BM, DQ_BN, 1, DQ_BM, DQ_BN>;
  static constexpr int DQ_SMEM = DqSmem::kBytes;

  static_assert(FWD_SMEM <= 101376 && BWD_SMEM <= 101376 && DQ_SMEM <= 101376, "tiles must fit sm_86's 99 KB");
  static_assert(FWD_BM % 16 == 0 && FWD_BN % 16 == 0 && BWD_BM % 16 == 0 && BWD_BN % 16 == 0 && DQ_BM % 16 == 0 &&
                    DQ_BN % 16 == 0,
                "tiles are whole 16-row warp slabs");
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

#ifndef PDNET_CUDA_EMULATION  // the CPU emulator has its own (tests/cuda_emu/cuda_emu_host.h)
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
#endif

}  // namespace pdnet::cuda
