// The KernelTable of one instruction-set build: table_<CPU_CAPABILITY>(), from the vectorised
// cores. Included by kernel_table_<isa>.cpp after ../../cpu/isa_build.h, so that at::vec and
// the cores compile into the build's inline namespace.
#pragma once

#ifndef CPU_CAPABILITY
#error "include ../../cpu/isa_build.h before kernel_table_impl.h"
#endif

#include "area_variance_vec.h"
#include "assemble_parts_vec.h"
#include "kernel_table.h"
#include "part_attention_vec.h"
#include "part_masks_vec.h"

#define PDNET_CONCAT_INNER(a, b) a##b
#define PDNET_CONCAT(a, b) PDNET_CONCAT_INNER(a, b)

namespace pdnet::cpu {
inline namespace CPU_CAPABILITY {

template <typename T>
constexpr Kernels<T> make_kernels() {
  return Kernels<T>{
      &attention_forward<T>,  &attention_backward<T>,  &attention_scratch,
      &part_masks_forward<T>, &part_masks_backward<T>, &part_masks_backward_from_masks<T>,
      &assemble_forward<T>,   &assemble_backward<T>,   &sum<T>,
  };
}

}  // namespace CPU_CAPABILITY

const KernelTable& PDNET_CONCAT(table_, CPU_CAPABILITY)() {
  static const KernelTable table{make_kernels<float>(), make_kernels<double>()};
  return table;
}

}  // namespace pdnet::cpu
