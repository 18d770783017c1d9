// The vectorised CPU compute cores of the ops, one table of them per instruction-set build.
//
// The cores (cpu/*_vec.h) are written with at::vec::Vectorized and work on raw pointers of
// contiguous tensors. kernel_table_impl.h gathers them into a KernelTable; it is compiled once
// per build of ../../cpu/isa.h, by kernel_table_default.cpp, kernel_table_avx2.cpp and
// kernel_table_avx512.cpp. kernel_table() is the table of the build that cpu_isa() chose.
// The op kernels (cpu/<op>_kernel.cpp) allocate outputs, split the work with
// parallel_items (../../cpu/parallel.h) and call these cores.
#pragma once

#include <cstdint>

#include "../../cpu/isa.h"

namespace pdnet::cpu {

// part_attention forward for one head bh = b * p + part; all pointers are the bases of
// contiguous [B, p, ...] tensors.
template <typename T>
struct AttnFwdArgs {
  const T* q;     // [BH, Nq, d]
  const T* kt;    // [BH, d, Nk]  (k transposed)
  const T* v;     // [BH, Nk, d]
  const T* mask;  // [BH, Nk] additive, or nullptr
  T* out;         // [BH, Nq, d]
  T* lse;         // [BH, Nq]
  int64_t Nq, Nk, d;
  T scale;
};

template <typename T>
struct AttnBwdArgs {
  const T* q;     // [BH, Nq, d]
  const T* k;     // [BH, Nk, d]
  const T* kt;    // [BH, d, Nk]
  const T* vt;    // [BH, d, Nk]  (v transposed)
  const T* mask;  // [BH, Nk] or nullptr
  const T* out;   // [BH, Nq, d]  forward output
  const T* lse;   // [BH, Nq]     forward log-sum-exp
  const T* dout;  // [BH, Nq, d]
  const T* dlse;  // [BH, Nq] or nullptr
  T* dk;          // [BH, Nk, d]  zero-initialised, rows of the key chunk are written
  T* dv;          // [BH, Nk, d]  zero-initialised
  T* dmask;       // [BH, Nk] zero-initialised, or nullptr when not requested
  int64_t Nq, Nk, d;
  T scale;
};

template <typename T>
struct Kernels {
  // rows [q0, q1) of head bh; scratch holds attention_scratch(d) elements
  void (*attention_forward)(const AttnFwdArgs<T>& a, int64_t bh, int64_t q0, int64_t q1, T* scratch);
  // keys [k0, k1) of head bh against every query; dq [Nq, d] (this head) is accumulated into
  void (*attention_backward)(const AttnBwdArgs<T>& a, int64_t bh, int64_t k0, int64_t k1, T* dq, T* scratch);
  int64_t (*attention_scratch)(int64_t d);
  // one batch element: logits [p, hw], gate [hw] -> out [p, hw], pixels [s, e)
  void (*part_masks_forward)(const T* logits, const T* gate, T* out, int64_t p, int64_t hw, int64_t s, int64_t e,
                             bool gate_is_logit);
  // one batch element: grad_out, logits [p, hw], gate [hw] -> grad_logits [p, hw], grad_gate [hw]
  // (grad_gate may be null)
  void (*part_masks_backward)(const T* grad_out, const T* logits, const T* gate, T* grad_logits, T* grad_gate,
                              int64_t p, int64_t hw, int64_t s, int64_t e, bool gate_is_logit);
  // the same from the forward's output masks [p, hw] instead of the logits (see
  // part_masks_vec.h; not for the gradient of a ground-truth gate)
  void (*part_masks_backward_from_masks)(const T* grad_out, const T* masks, const T* gate, T* grad_logits, T* grad_gate,
                                         int64_t p, int64_t hw, int64_t s, int64_t e, bool gate_is_logit);
  // one batch element: feats [p, C, hw], masks [p, hw] -> out[c, s:e] of [C, hw]
  void (*assemble_forward)(const T* pf, const T* yf, const T* masks, T* out, int64_t p, int64_t C, int64_t hw,
                           int64_t c, int64_t s, int64_t e);
  // one batch element and part k: grad [C, hw], feats [p, C, hw], masks [p, hw] ->
  // grad_feats[k, :, s:e] (if not null), grad_masks[k, s:e] (if not null)
  void (*assemble_backward)(const T* grad, const T* pf, const T* yf, const T* masks, T* grad_feats, T* grad_masks,
                            int64_t p, int64_t C, int64_t hw, int64_t k, int64_t s, int64_t e);
  // sum of x[0:n] in double precision accumulation
  double (*sum)(const T* x, int64_t n);
};

struct KernelTable {
  Kernels<float> f32;
  Kernels<double> f64;
};

// The table of each build (kernel_table_<isa>.cpp).
const KernelTable& table_DEFAULT();
#if PDNET_X86_ISA_BUILDS
const KernelTable& table_AVX2();
const KernelTable& table_AVX512();
#endif

// The table of the build this process runs.
inline const KernelTable& kernel_table() {
  switch (cpu_isa()) {
#if PDNET_X86_ISA_BUILDS
    case Isa::kAvx512:
      return table_AVX512();
    case Isa::kAvx2:
      return table_AVX2();
#endif
    default:
      return table_DEFAULT();
  }
}

template <typename T>
const Kernels<T>& kernels();
template <>
inline const Kernels<float>& kernels<float>() {
  return kernel_table().f32;
}
template <>
inline const Kernels<double>& kernels<double>() {
  return kernel_table().f64;
}

}  // namespace pdnet::cpu
