// Self-test of the emulator and of mma_sm80.cuh's primitives, against plain matrix products.
//
//   selftest <f16|bf16> <case>
// case "fragments": one warp builds the A / B / C fragments of mma.m16n8k16 by hand from the
// fragment layout documented in mma_sm80.cuh (no ldmatrix) and checks D = A B + C: the
// emulator's mma against the documented layout.
// case "gemm": 4 warps, cp.async tiles in padded shared memory, S = A B^T through load_a and
// load_b_nk, the same product through load_b_kn of B^T's transpose, P = 2^(S - rowmax) (row max
// by __shfl_xor_sync within the 4 lanes of a group), then O = P V with P as an A fragment
// (c_to_a) and V through load_b_kn: the loaders' layouts, c_to_a and the shuffles.
// Cases that must be caught (exit status 3 from the emulator):
// "no_wait" (no cp.async.wait_group), "no_sync" (no __syncthreads after the copies),
// "divergent" (lanes of a warp at different collectives), "deadlock" (a lane exits before a
// warp collective), "mismatched" (one warp at a __syncthreads the others skip), "misaligned"
// (ldmatrix of an address off 16 bytes), "plain_race" (a plain store read by another warp with no
// barrier in between), "two_owners" (two blocks write the same output element): both caught when
// built with cuda_emu_races.h's race detection.
// Exit status: 0 when the results match, 1 when they do not, 3 when the emulator stops.
#include "../../csrc/ops/cuda/device_math.cuh"
#include "../../csrc/ops/cuda/mma_sm80.cuh"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

PDNET_EMU_DYNAMIC_SMEM(emu_selftest, smem)

namespace emu_selftest {

using namespace pdnet::cuda::mma;

constexpr int M = 64, N = 32, K = 32, DV = 32;   // rows (4 warps x 16), keys, head dim, value dim
constexpr int LDA = K + 8, LDN = N + 8, LDV = DV + 8;  // padded leading dims (16-byte multiples)
enum Case { kGemm, kNoWait, kNoSync, kDivergent, kDeadlock, kMismatched, kMisaligned, kPlainRace };

template <typename T>
uint16_t bits(T x) {
  uint16_t b;
  std::memcpy(&b, &x, 2);
  return b;
}
template <typename T>
uint32_t pack_bits(T lo, T hi) {
  return bits(lo) | (static_cast<uint32_t>(bits(hi)) << 16);
}

// D = A B + C for one 16 x 16 x 8 tile, fragments built from the documented layout
template <typename T>
__global__ void fragments_kernel(const T* A, const T* B, const float* C, float* D) {  // A [16][16], B [16][8] (k, n)
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const uint32_t a[4] = {pack_bits(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]),
                         pack_bits(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]),
                         pack_bits(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]),
                         pack_bits(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9])};
  const uint32_t b[2] = {pack_bits(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]),
                         pack_bits(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g])};
  float c[4];
  for (int i = 0; i < 4; ++i) c[i] = C[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)];
  mma16816<T>(c, a, b);
  for (int i = 0; i < 4; ++i) D[(g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1)] = c[i];
}

// every block writes the same words: two owners of an output element
__global__ void two_owners_kernel(float* out) {
  out[threadIdx.x] = static_cast<float>(blockIdx.x);
}

template <typename T>
__global__ void gemm_kernel(const T* a, const T* bnk, const T* bkn, const T* v, float* s1, float* s2, float* o,
                            int mode) {  // a [M][K], bnk [N][K], bkn [K][N], v [N][DV]
  extern __shared__ __align__(128) unsigned char smem[];
  T* sA = reinterpret_cast<T*>(smem);
  T* sBnk = sA + M * LDA;
  T* sBkn = sBnk + N * LDA;
  T* sV = sBkn + K * LDN;
  if (mode == kPlainRace) {  // a plain store read by another warp with no barrier in between
    float* words = reinterpret_cast<float*>(smem);
    words[threadIdx.x] = 1.f;
    if (words[(threadIdx.x + 32) % blockDim.x] == 2.f) o[0] = 0.f;
    __syncthreads();
  }
  auto load = [&](T* dst, const T* src, int rows, int cols, int ld) {
    for (int i = threadIdx.x; i < rows * cols / 8; i += blockDim.x) {
      const int r = i / (cols / 8), c = (i % (cols / 8)) * 8;
      cp_async_16(dst + r * ld + c, src + r * cols + c, true);
    }
  };
  load(sA, a, M, K, LDA);
  load(sBnk, bnk, N, K, LDA);
  load(sBkn, bkn, K, N, LDN);
  load(sV, v, N, DV, LDV);
  cp_async_commit();
  if (mode != kNoWait) cp_async_wait<0>();
  if (mode != kNoSync) __syncthreads();
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  if (mode == kMismatched && warp == 0) __syncthreads();
  if (mode == kDeadlock && warp == 1 && lane == 0) return;
  if (mode == kDivergent) {
    if (lane < 16) {
      __syncwarp();
    } else {
      (void)__shfl_xor_sync(0xffffffffu, 1.f, 1);
    }
  }
  float acc1[N / 8][4] = {}, acc2[N / 8][4] = {};
  for (int kk = 0; kk < K / 16; ++kk) {
    uint32_t af[4];
    load_a(af, sA + (mode == kMisaligned ? 4 : 0), LDA, warp * 16, kk * 16);
    for (int nn = 0; nn < N / 16; ++nn) {
      uint32_t b1[2][2], b2[2][2];
      load_b_nk(b1, sBnk, LDA, nn * 16, kk * 16);
      load_b_kn(b2, sBkn, LDN, kk * 16, nn * 16);
      for (int j = 0; j < 2; ++j) {
        mma16816<T>(acc1[2 * nn + j], af, b1[j]);
        mma16816<T>(acc2[2 * nn + j], af, b2[j]);
      }
    }
  }
  float mx[2] = {-INFINITY, -INFINITY};  // rows g and g + 8 of the warp's tile
  for (int j = 0; j < N / 8; ++j) {
    for (int i = 0; i < 4; ++i) {
      const int row = warp * 16 + g + 8 * (i >> 1), col = j * 8 + 2 * t + (i & 1);
      s1[row * N + col] = acc1[j][i];
      s2[row * N + col] = acc2[j][i];
      mx[i >> 1] = fmaxf(mx[i >> 1], acc1[j][i]);
    }
  }
  for (int h = 0; h < 2; ++h) {
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
    mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
  }
  float oacc[DV / 8][4] = {};
  for (int kk = 0; kk < N / 16; ++kk) {
    float p0[4], p1[4];
    for (int i = 0; i < 4; ++i) {
      p0[i] = exp2_approx(acc1[2 * kk][i] - mx[i >> 1]);
      p1[i] = exp2_approx(acc1[2 * kk + 1][i] - mx[i >> 1]);
    }
    uint32_t pa[4];
    c_to_a<T>(pa, p0, p1);
    for (int nn = 0; nn < DV / 16; ++nn) {
      uint32_t vb[2][2];
      load_b_kn(vb, sV, LDV, kk * 16, nn * 16);
      mma16816<T>(oacc[2 * nn], pa, vb[0]);
      mma16816<T>(oacc[2 * nn + 1], pa, vb[1]);
    }
  }
  for (int j = 0; j < DV / 8; ++j)
    for (int i = 0; i < 4; ++i) o[(warp * 16 + g + 8 * (i >> 1)) * DV + j * 8 + 2 * t + (i & 1)] = oacc[j][i];
}

}  // namespace emu_selftest

namespace {

using emu_selftest::DV;
using emu_selftest::K;
using emu_selftest::M;
using emu_selftest::N;

uint32_t g_state = 12345u;
float uniform() {  // in [-1, 1)
  g_state = g_state * 1664525u + 1013904223u;
  return static_cast<float>(g_state >> 8) / 8388608.f - 1.f;
}

template <typename T>
std::vector<T> random_matrix(int n) {
  std::vector<T> x(n);
  for (T& e : x) e = pdnet::cuda::from_float<T>(uniform());
  return x;
}
template <typename T>
double val(T x) {
  return pdnet::cuda::to_float(x);
}

// max |got - want| / max(1, max |want|)
double rel_error(const std::vector<float>& got, const std::vector<double>& want) {
  double err = 0, scale = 1;
  for (size_t i = 0; i < want.size(); ++i) {
    scale = std::max(scale, std::fabs(want[i]));
    const double e = std::fabs(got[i] - want[i]);
    err = std::isnan(e) ? INFINITY : std::max(err, e);
  }
  return err / scale;
}

template <typename T>
int run_fragments() {
  auto A = random_matrix<T>(16 * 16), B = random_matrix<T>(16 * 8);
  std::vector<float> C(16 * 8), D(16 * 8);
  for (float& c : C) c = uniform();
  pdnet_emu::launch("fragments_kernel", emu_selftest::fragments_kernel<T>, dim3(1), dim3(32), 0, emu_selftest::smem,
                    A.data(), B.data(), C.data(), D.data());
  std::vector<double> want(16 * 8);
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double acc = C[m * 8 + n];
      for (int k = 0; k < 16; ++k) acc += val(A[m * 16 + k]) * val(B[k * 8 + n]);
      want[m * 8 + n] = acc;
    }
  const double err = rel_error(D, want);
  std::printf("fragments: D = A B + C max relative error %.3g\n", err);
  return err < 1e-5 ? 0 : 1;
}

template <typename T>
int run_gemm(int mode) {
  auto a = random_matrix<T>(M * K), bnk = random_matrix<T>(N * K), v = random_matrix<T>(N * DV);
  std::vector<T> bkn(K * N);
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) bkn[k * N + n] = bnk[n * K + k];
  std::vector<float> s1(M * N), s2(M * N), o(M * DV);
  for (const auto* buf : {static_cast<const void*>(a.data()), static_cast<const void*>(bnk.data()),
                          static_cast<const void*>(bkn.data()), static_cast<const void*>(v.data())})
    pdnet_emu::global_buffer(buf, (buf == v.data() ? N * DV : M * K) * sizeof(T));
  const size_t smem =
      (M * emu_selftest::LDA + N * emu_selftest::LDA + K * emu_selftest::LDN + N * emu_selftest::LDV) * sizeof(T);
  pdnet_emu::launch("gemm_kernel", emu_selftest::gemm_kernel<T>, dim3(1), dim3(128), smem, emu_selftest::smem, a.data(),
                    bnk.data(), bkn.data(), v.data(), s1.data(), s2.data(), o.data(), mode);
  std::vector<double> s(M * N), ref_o(M * DV, 0.0);
  for (int m = 0; m < M; ++m) {
    double mx = -INFINITY;
    for (int n = 0; n < N; ++n) {
      double acc = 0;
      for (int k = 0; k < K; ++k) acc += val(a[m * K + k]) * val(bnk[n * K + k]);
      s[m * N + n] = acc;
      mx = std::max(mx, acc);
    }
    for (int n = 0; n < N; ++n) {  // P rounded to T from the kernel's own S (exp2 of its rounding)
      const double p = val(pdnet::cuda::from_float<T>(std::exp2(s1[m * N + n] - static_cast<float>(mx))));
      for (int c = 0; c < DV; ++c) ref_o[m * DV + c] += p * val(v[n * DV + c]);
    }
  }
  const double e1 = rel_error(s1, s), e2 = rel_error(s2, s), eo = rel_error(o, ref_o);
  std::printf("gemm: S via load_b_nk %.3g, S via load_b_kn %.3g, O = P V %.3g (max relative errors)\n", e1, e2, eo);
  return e1 < 1e-5 && e2 < 1e-5 && eo < 2e-2 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr,
                 "usage: selftest <f16|bf16> "
                 "<fragments|gemm|no_wait|no_sync|divergent|deadlock|mismatched|misaligned|plain_race|two_owners>\n");
    return 2;
  }
  const std::string type = argv[1], which = argv[2];
  const bool bf16 = type == "bf16";
  if (!bf16 && type != "f16") return 2;
  if (which == "fragments") return bf16 ? run_fragments<__nv_bfloat16>() : run_fragments<__half>();
  if (which == "two_owners") {
    std::vector<float> out(32);
    pdnet_emu::output_buffer(out.data(), out.size() * sizeof(float));
    pdnet_emu::launch("two_owners_kernel", emu_selftest::two_owners_kernel, dim3(2), dim3(32), 0, emu_selftest::smem,
                      out.data());
    return 0;
  }
  const char* names[] = {"gemm",     "no_wait",    "no_sync",    "divergent",
                         "deadlock", "mismatched", "misaligned", "plain_race"};
  for (int mode = 0; mode < 8; ++mode)
    if (which == names[mode]) return bf16 ? run_gemm<__nv_bfloat16>(mode) : run_gemm<__half>(mode);
  std::fprintf(stderr, "selftest: unknown case %s\n", which.c_str());
  return 2;
}
