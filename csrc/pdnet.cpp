// The pdnet._C extension: owner of the operator namespace ``pdnet``.
//
// Registration layout (torchvision style, see DESIGN.md section 5):
//   * this file holds the one TORCH_LIBRARY(pdnet, m) of the namespace; it declares no
//     op itself, it only points torch at the Python module that registers the fake
//     (meta) kernels and the autograd formulas of the ops;
//   * csrc/ops/<op>.cpp declares the schemas of one op and of its backward op with
//     TORCH_LIBRARY_FRAGMENT(pdnet, m), plus the C++ API and the input checks;
//   * csrc/ops/cpu/<op>_kernel.cpp and csrc/ops/cuda/<op>_kernel.cu register the
//     per-device kernels with TORCH_LIBRARY_IMPL(pdnet, CPU|CUDA, m).
// No pybind11: importing pdnet._C only loads the shared library, whose static
// initialisers perform the registrations.
#include <Python.h>

#include <torch/library.h>

#include "cpu/isa.h"
#include "ops/kernel_smem.h"

TORCH_LIBRARY(pdnet, m) {
  m.set_python_module("pdnet.ops._cpp_backend");
}

namespace {

// cpu_isa() -> "DEFAULT", "AVX2" or "AVX512": the build of the vectorised CPU code in use.
PyObject* cpu_isa(PyObject* /*self*/, PyObject* /*args*/) {
  return PyUnicode_FromString(pdnet::cpu::isa_name(pdnet::cpu::cpu_isa()));
}

// cuda_kernel_smem() -> [(kernel, threads, dynamic shared memory bytes), ...]: the launch shapes
// of the CUDA kernels (csrc/ops/kernel_smem.h); [] in a build without CUDA.
PyObject* cuda_kernel_smem(PyObject* /*self*/, PyObject* /*args*/) {
  const auto& entries = pdnet::ops::kernel_smem();
  PyObject* list = PyList_New(static_cast<Py_ssize_t>(entries.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < entries.size(); ++i) {
    PyObject* item = Py_BuildValue("(sii)", entries[i].kernel.c_str(), entries[i].threads, entries[i].smem_bytes);
    if (item == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, static_cast<Py_ssize_t>(i), item);
  }
  return list;
}

PyMethodDef pdnet_c_methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS, "Instruction set of the CPU kernels in use."},
    {"cuda_kernel_smem", cuda_kernel_smem, METH_NOARGS,
     "Launch shapes of the CUDA kernels: [(kernel, threads, dynamic shared memory bytes)]."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef pdnet_c_module = {
    PyModuleDef_HEAD_INIT,
    "_C",
    "pdnet's compiled ops, registered under torch.ops.pdnet (see pdnet.ops._cpp_backend).",
    -1,
    pdnet_c_methods,
};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&pdnet_c_module);
  if (module == nullptr) {
    return nullptr;
  }
#ifdef PDNET_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "with_cuda", with_cuda) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
