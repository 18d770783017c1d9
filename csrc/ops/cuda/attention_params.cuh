// Arguments of the part_attention CUDA launchers, shared by the float32 kernels
// (attention_tiles.cuh) and the tensor-core kernels (float16 / bfloat16):
// part_attention_fwd_mma.cuh and part_attention_bwd_mma.cuh.
//
// Every tensor is contiguous: q, out, dout, dq are [BH, Nq, d]; k, v, dk, dv are [BH, Nk, d]
// (storage type T of the kernel); mask, dmask are [BH, Nk] float32; lse, delta are [BH, Nq]
// float32. BH = B * p heads. The launchers pick the head-dim instantiation (d rounded up to
// 32, 64 or 128), the tiles and the grid, and check the device (compute capability 8.0+,
// shared memory) before launching on the current stream of the current device (the caller
// holds a CUDAGuard on the tensors' device).
#pragma once

#include <cstdint>

namespace pdnet::cuda {

struct AttnFwdParams {
  const void* q;
  const void* k;
  const void* v;
  const float* mask;  // additive key mask, or nullptr
  void* out;
  float* lse;  // natural-log log-sum-exp of the scaled, masked scores; -inf: every key masked
  int64_t BH, Nq, Nk;
  int d;
  float scale_log2;  // scale * log2(e)
  bool vec16;        // d is the instantiation's D and q, k, v start on 16-byte boundaries
};

struct AttnBwdParams {
  const void* q;
  const void* k;
  const void* v;
  const float* mask;  // or nullptr
  const void* dout;
  const float* lse;    // the forward's lse (natural log; -inf: no live key, no gradient)
  const float* delta;  // rowsum(dout * out) - grad_lse
  void* dq;
  void* dk;
  void* dv;
  float* dmask;  // column sums of dS, or nullptr
  int64_t BH, Nq, Nk;
  int d;
  float scale;       // dK = scale * dS^T Q, dQ = scale * dS K
  float scale_log2;  // scale * log2(e)
  bool vec16;        // d is the instantiation's D and q, k, v, dout start on 16-byte boundaries
};

}  // namespace pdnet::cuda
