// Runs the CUDA attention kernels of the extension on the emulator, as its host functions launch
// them (part_attention_kernel.cu, part_attention_backward_kernel.cu: those files are compiled here
// with their ATen parts left out):
//   attention fwd <f32|f16|bf16> BH Nq Nk d scale flags dir
//   attention bwd <f32|f16|bf16> BH Nq Nk d scale flags dir
// flags: "-" or letters: m (a key mask), l (the backward gets grad_lse), a (every array starts one
// element past a 16-byte boundary: the launchers' element-wise path).
// Inputs are raw arrays in dir: q [BH, Nq, d], k, v [BH, Nk, d] in the storage type, mask [BH, Nk]
// float32; the backward also dout and out [BH, Nq, d] (storage type), lse and dlse [BH, Nq]
// float32. Outputs are written there: fwd out (storage type) and lse; bwd dq, dk, dv (storage
// type) and dmask (float32, with a mask). Outputs start as 0xff bytes (NaN), so that an element
// no kernel writes stays NaN. The launches are printed, with the ldmatrix bank conflicts (extra
// shared-memory wavefronts) of each.
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "../../csrc/ops/cuda/device_math.cuh"
#include "cuda_emu_host.h"

// the float32 kernels' dynamic shared memory (their namespace), before their files declare it
namespace pdnet::ops {
namespace {
alignas(128) unsigned char smem[pdnet_emu::kSmemCapacity];
}  // namespace
}  // namespace pdnet::ops

#include "../../csrc/ops/cuda/part_attention_backward_kernel.cu"
#include "../../csrc/ops/cuda/part_attention_kernel.cu"

namespace {

using pdnet::cuda::AttnBwdParams;
using pdnet::cuda::AttnFwdParams;

// `n` elements of `elem` bytes starting 16-byte aligned, or one element past (misalign); the
// buffer ends where its allocation ends, so that AddressSanitizer sees an overrun
struct Buffer {
  unsigned char* base = nullptr;
  unsigned char* data = nullptr;
  size_t bytes = 0;
  Buffer(size_t n, size_t elem, bool misalign) : bytes(n * elem) {
    const size_t off = misalign ? elem : 0;
    base = static_cast<unsigned char*>(::operator new(bytes + off, std::align_val_t(16)));
    data = base + off;
    std::memset(data, 0xff, bytes);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { ::operator delete(base, std::align_val_t(16)); }
  template <typename T = void>
  T* as() const {
    return reinterpret_cast<T*>(data);
  }
  bool aligned16() const { return reinterpret_cast<uintptr_t>(data) % 16 == 0; }
};

struct Run {
  int64_t BH, Nq, Nk;
  int d;
  double scale;
  bool mask, dlse, misalign;
  std::string dir;

  void read(Buffer& b, const char* name) const {
    const std::string path = dir + "/" + name;
    FILE* f = std::fopen(path.c_str(), "rb");
    if (f == nullptr) pdnet_emu::fail("cannot open %s", path.c_str());
    const size_t got = std::fread(b.data, 1, b.bytes, f);
    const bool extra = std::fgetc(f) != EOF;
    std::fclose(f);
    if (got != b.bytes || extra) pdnet_emu::fail("%s: expected %zu bytes", path.c_str(), b.bytes);
    pdnet_emu::global_buffer(b.data, b.bytes);
  }
  // an output of the kernels: with race checks, each word written by one block per launch
  static void output(Buffer& b) { pdnet_emu::output_buffer(b.data, b.bytes); }
  void write(const Buffer& b, const char* name) const {
    const std::string path = dir + "/" + name;
    FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr || std::fwrite(b.data, 1, b.bytes, f) != b.bytes) pdnet_emu::fail("cannot write %s", path.c_str());
    std::fclose(f);
  }
};

template <typename T>
std::string type_name() {
  if constexpr (std::is_same<T, float>::value) {
    return "float";
  } else {
    return pdnet::cuda::mma_io::type_name<T>();
  }
}

// every kernel the launchers can pick, named as the launch-shape record names them
template <typename T>
void name_kernels() {
  namespace ops = pdnet::ops;
  namespace cu = pdnet::cuda;
  pdnet_emu::name_kernel(ops::attn_delta_kernel<T>, "attn_delta_kernel<" + type_name<T>() + ">", ops::smem);
  auto one = [](auto dc) {
    constexpr int D = decltype(dc)::value;
    const std::string args = "<" + type_name<T>() + ", " + std::to_string(D) + ">";
    if constexpr (std::is_same<T, float>::value) {
      pdnet_emu::name_kernel(ops::attn_fwd_kernel<T, D>, "attn_fwd_kernel" + args, ops::smem);
      pdnet_emu::name_kernel(ops::attn_bwd_dkdv_kernel<T, D>, "attn_bwd_dkdv_kernel" + args, ops::smem);
      pdnet_emu::name_kernel(ops::attn_bwd_dq_kernel<T, D>, "attn_bwd_dq_kernel" + args, ops::smem);
    } else {
      pdnet_emu::name_kernel(cu::attn_fwd_mma_kernel<T, D>, "attn_fwd_mma_kernel" + args, cu::smem);
      pdnet_emu::name_kernel(cu::attn_bwd_dkdv_mma_kernel<T, D>, "attn_bwd_dkdv_mma_kernel" + args, cu::smem);
      pdnet_emu::name_kernel(cu::attn_bwd_dq_mma_kernel<T, D>, "attn_bwd_dq_mma_kernel" + args, cu::smem);
    }
  };
  one(std::integral_constant<int, 32>{});
  one(std::integral_constant<int, 64>{});
  one(std::integral_constant<int, 128>{});
}

// part_attention_cuda from its contiguous inputs on
template <typename T>
void forward(const Run& r) {
  const size_t e = sizeof(T);
  const bool a = r.misalign;
  Buffer q(r.BH * r.Nq * r.d, e, a), k(r.BH * r.Nk * r.d, e, a), v(r.BH * r.Nk * r.d, e, a),
      mask(r.mask ? r.BH * r.Nk : 0, 4, a), out(r.BH * r.Nq * r.d, e, a), lse(r.BH * r.Nq, 4, a);
  r.read(q, "q");
  r.read(k, "k");
  r.read(v, "v");
  if (r.mask) r.read(mask, "mask");
  Run::output(out);
  Run::output(lse);
  const char* where = "pdnet::part_attention (CUDA, emulated)";
  const float* m = r.mask ? mask.as<float>() : nullptr;
  const float scale_log2 = static_cast<float>(r.scale) * pdnet::cuda::kLog2e;
  if constexpr (std::is_same<T, float>::value) {
    pdnet::cuda::dispatch_head_dim(where, r.d, [&](auto dc) {
      constexpr int D = decltype(dc)::value;
      using Cfg = pdnet::cuda::AttnCfg<float, D>;
      const bool vec16 = r.d == D && q.aligned16() && k.aligned16() && v.aligned16();
      const int64_t n_qblocks = (r.Nq + Cfg::FWD_BM - 1) / Cfg::FWD_BM;
      pdnet::cuda::launch_with_smem(where, at::Tensor{}, pdnet::ops::attn_fwd_kernel<float, D>, r.BH * n_qblocks,
                                    Cfg::FWD_BM * 2, Cfg::FWD_SMEM, q.as<const float>(), k.as<const float>(),
                                    v.as<const float>(), m, out.as<float>(), lse.as<float>(), r.Nq, r.Nk, r.d,
                                    scale_log2, n_qblocks, vec16);
    });
  } else {
    const AttnFwdParams p{
        q.data, k.data, v.data, m,   out.data,   lse.as<float>(),
        r.BH,   r.Nq,   r.Nk,   r.d, scale_log2, q.aligned16() && k.aligned16() && v.aligned16() && out.aligned16()};
    pdnet::cuda::launch_attn_fwd_mma<T>(where, at::Tensor{}, p);
  }
  r.write(out, "out");
  r.write(lse, "lse");
}

// part_attention_backward_cuda from its contiguous inputs on: attn_delta_kernel (the grid of
// launch_backward), then the gradient kernels of T through their launchers
template <typename T>
void backward(const Run& r) {
  const size_t e = sizeof(T), nq = r.BH * r.Nq * r.d, nk = r.BH * r.Nk * r.d, rows = r.BH * r.Nq;
  const size_t keys = r.mask ? r.BH * r.Nk : 0;
  const bool a = r.misalign;
  Buffer q(nq, e, a), k(nk, e, a), v(nk, e, a), mask(keys, 4, a), dout(nq, e, a), out(nq, e, a), lse(rows, 4, a),
      dlse(r.dlse ? rows : 0, 4, a), delta(rows, 4, a), dq(nq, e, a), dk(nk, e, a), dv(nk, e, a), dmask(keys, 4, a);
  for (auto [b, name] : {std::pair{&q, "q"}, {&k, "k"}, {&v, "v"}, {&dout, "dout"}, {&out, "out"}, {&lse, "lse"}})
    r.read(*b, name);
  if (r.mask) r.read(mask, "mask");
  if (r.dlse) r.read(dlse, "dlse");
  for (Buffer* b : {&delta, &dq, &dk, &dv, &dmask}) Run::output(*b);
  const char* where = "pdnet::part_attention_backward (CUDA, emulated)";
  AttnBwdParams prm{};
  prm.q = q.data;
  prm.k = k.data;
  prm.v = v.data;
  prm.mask = r.mask ? mask.as<const float>() : nullptr;
  prm.dout = dout.data;
  prm.lse = lse.as<const float>();
  prm.delta = delta.as<float>();
  prm.dq = dq.data;
  prm.dk = dk.data;
  prm.dv = dv.data;
  prm.dmask = r.mask ? dmask.as<float>() : nullptr;
  prm.BH = r.BH;
  prm.Nq = r.Nq;
  prm.Nk = r.Nk;
  prm.d = r.d;
  prm.scale = static_cast<float>(r.scale);
  prm.scale_log2 = static_cast<float>(r.scale) * pdnet::cuda::kLog2e;
  prm.vec16 =
      (r.d == 32 || r.d == 64 || r.d == 128) && q.aligned16() && k.aligned16() && v.aligned16() && dout.aligned16();
  const int threads = pdnet::ops::kDeltaThreads, rows_per_block = threads / 32;
  const int64_t blocks = std::min<int64_t>((rows + rows_per_block - 1) / rows_per_block, 65535LL * 32);
  pdnet::cuda::launch_with_smem(where, at::Tensor{}, pdnet::ops::attn_delta_kernel<T>, blocks, threads, 0,
                                dout.as<const T>(), out.as<const T>(), r.dlse ? dlse.as<const float>() : nullptr,
                                delta.as<float>(), static_cast<int64_t>(rows), r.d);
  if constexpr (std::is_same<T, float>::value) {
    pdnet::ops::launch_attn_bwd_float(where, at::Tensor{}, at::Tensor{}, prm);
  } else {
    pdnet::cuda::launch_attn_bwd_mma<T>(where, at::Tensor{}, prm);
  }
  r.write(dq, "dq");
  r.write(dk, "dk");
  r.write(dv, "dv");
  if (r.mask) r.write(dmask, "dmask");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 10) {
    std::fprintf(stderr, "usage: attention <fwd|bwd> <f32|f16|bf16> BH Nq Nk d scale flags dir\n");
    return 2;
  }
  const std::string op = argv[1], type = argv[2], flags = argv[8];
  const Run r{std::atoll(argv[3]),
              std::atoll(argv[4]),
              std::atoll(argv[5]),
              std::atoi(argv[6]),
              std::atof(argv[7]),
              flags.find('m') != std::string::npos,
              flags.find('l') != std::string::npos,
              flags.find('a') != std::string::npos,
              argv[9]};
  if ((op != "fwd" && op != "bwd") || (type != "f32" && type != "f16" && type != "bf16") || r.BH < 1 || r.Nq < 1 ||
      r.Nk < 1 || r.d < 1) {
    std::fprintf(stderr, "attention: bad arguments\n");
    return 2;
  }
  name_kernels<float>();
  name_kernels<__half>();
  name_kernels<__nv_bfloat16>();
  const bool fwd = op == "fwd";
  if (type == "f32") {
    fwd ? forward<float>(r) : backward<float>(r);
  } else if (type == "f16") {
    fwd ? forward<__half>(r) : backward<__half>(r);
  } else {
    fwd ? forward<__nv_bfloat16>(r) : backward<__nv_bfloat16>(r);
  }
  for (const auto& l : pdnet_emu::launches())
    std::printf("%s: %lld blocks x %d threads, %d bytes of shared memory; ldmatrix: %ld matrices, %ld bank conflicts\n",
                l.kernel.c_str(), (long long)l.blocks, l.threads, l.smem_bytes, l.ldmatrix_matrices,
                l.ldmatrix_conflicts);
  return 0;
}
