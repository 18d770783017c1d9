// Builds the KernelTable of one instruction set from the vectorised cores. Included
// once by isa_default.cpp and once by isa_avx2.cpp, each after defining CPU_CAPABILITY
// (and the matching CPU_CAPABILITY_<ISA> macro) so that at::vec and the cores compile
// into that ISA's inline namespace.
#pragma once

#ifndef CPU_CAPABILITY
#error "define CPU_CAPABILITY before including isa_impl.h"
#endif

#include "isa.h"

#include "area_variance_vec.h"
#include "assemble_parts_vec.h"
#include "part_attention_vec.h"
#include "part_masks_vec.h"

#define PDNET_CONCAT_INNER(a, b) a##b
#define PDNET_CONCAT(a, b) PDNET_CONCAT_INNER(a, b)
#define PDNET_STRINGIFY_INNER(a) #a
#define PDNET_STRINGIFY(a) PDNET_STRINGIFY_INNER(a)

namespace pdnet::cpu {
inline namespace CPU_CAPABILITY {

template <typename T>
constexpr Kernels<T> make_kernels() {
  return Kernels<T>{
      &attention_forward<T>,      &attention_backward<T>, &attention_scratch,
      &part_masks_forward<T>,     &part_masks_backward<T>, &part_masks_backward_from_masks<T>,
      &assemble_forward<T>,       &assemble_backward<T>,  &sum<T>,
  };
}

}  // namespace CPU_CAPABILITY

const KernelTable* PDNET_CONCAT(table_, CPU_CAPABILITY)() {
  static const KernelTable table{PDNET_STRINGIFY(CPU_CAPABILITY), make_kernels<float>(),
                                 make_kernels<double>()};
  return &table;
}

}  // namespace pdnet::cpu
