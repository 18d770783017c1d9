// The WinogradKernels of one instruction-set build: winograd_<CPU_CAPABILITY>(). Included by
// winograd_table_<isa>.cpp after ../../cpu/isa_build.h.
#pragma once

#ifndef CPU_CAPABILITY
#error "include ../../cpu/isa_build.h before winograd_table_impl.h"
#endif

#include "winograd.h"
#include "winograd_vec.h"

#define PDNET_WINO_CONCAT_INNER(a, b) a##b
#define PDNET_WINO_CONCAT(a, b) PDNET_WINO_CONCAT_INNER(a, b)

namespace pdnet::cpu {

const WinogradKernels& PDNET_WINO_CONCAT(winograd_, CPU_CAPABILITY)() {
  static const WinogradKernels table{&winograd::input_transform, &winograd::gemm, &winograd::output_transform};
  return table;
}

}  // namespace pdnet::cpu
