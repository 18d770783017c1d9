"""Build script of the pdnet package.

The ``pdnet`` package, plus the Triton kernels in ``kernels/`` (when present),
installed as the subpackage ``pdnet.kernels``, plus the compiled ops ``pdnet._C``
built from ``csrc/`` (see ``_extension_modules``).

Install into an environment that already has torch, without build isolation:

    pip install --no-build-isolation -e .
"""
from __future__ import annotations

import os
import re
import sys
import sysconfig
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent.resolve()


packages = find_packages(include=["pdnet", "pdnet.*"])
package_dir = {"": "."}
if (ROOT / "kernels" / "__init__.py").is_file():
    packages.append("pdnet.kernels")
    package_dir["pdnet.kernels"] = "kernels"
if (ROOT / "configs").is_dir():  # the shipped training recipes, found by name (pdnet train --config release)
    packages.append("pdnet.configs")
    package_dir["pdnet.configs"] = "configs"



def _extension_modules():
    """The compiled ops ``pdnet._C`` (csrc/, see README "C++/CUDA extension").

    CPU sources always; the CUDA sources too when nvcc (``$CUDA_HOME`` or
    /usr/local/cuda) and a CUDA build of torch are present and ``PDNET_NO_CUDA`` is not
    1, as sm_80 (A100), sm_86 (RTX 3090, the paper's GPU) and sm_90 (H100/H200) machine
    code plus compute_90 PTX unless ``TORCH_CUDA_ARCH_LIST`` says otherwise (the PTX is
    compiled by the driver on newer GPUs).

    Compiled once, with ninja: every .cpp and .cu file is one job and the jobs run in
    parallel, ``MAX_JOBS`` of them (default: the number of CPU cores this process may
    use). The objects and ninja's log (``.ninja_log``: per-object compile times) are kept
    in ``build/temp.<platform>-<python>/`` (see :class:`_BuildExt`), so a re-install after
    an edit recompiles only the objects whose sources or headers changed.
    Returns (ext_modules, cmdclass); both empty when torch cannot be imported.
    """
    csrc = Path("csrc")
    if not (ROOT / csrc).is_dir():
        return [], {}
    if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ:
        if Path("/usr/local/cuda/bin/nvcc").is_file():
            os.environ["CUDA_HOME"] = "/usr/local/cuda"  # before torch.utils.cpp_extension reads it
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as exc:
        print(f"pdnet: not building the C++/CUDA extension, torch is not importable ({exc}); "
              "pdnet will use its reference ops", file=sys.stderr)
        return [], {}

    def rel(pattern):
        return sorted(str(f.relative_to(ROOT)) for f in ROOT.glob(pattern))

    sources = rel("csrc/**/*.cpp")  # every C++ file below csrc/ (CPU code, op schemas, evaluation)
    cuda_sources = rel("csrc/**/*.cu")
    # -Wno-*: noise from torch's at::vec headers and GCC's AVX-512 intrinsics
    cxx_flags = ["-O3", "-g0", "-Wno-unknown-pragmas", "-Wno-psabi", "-Wno-maybe-uninitialized"]
    # at::parallel_for runs threads only where the including file is compiled with OpenMP;
    # the linked libgomp.so.1 resolves to the one torch already loaded
    link_flags = []
    if sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    cuda_home = cpp_extension.CUDA_HOME
    nvcc = Path(cuda_home, "bin", "nvcc") if cuda_home else None
    if os.environ.get("PDNET_NO_CUDA", "0") == "1":
        skip = "PDNET_NO_CUDA=1"
    elif torch.version.cuda is None:
        skip = "torch is a CPU-only build"
    elif nvcc is None or not nvcc.is_file():
        skip = "nvcc not found (set CUDA_HOME)"
    elif not cuda_sources:
        skip = "no CUDA sources"
    else:
        skip = None
    if skip is not None:
        print(f"pdnet: building the C++ extension WITHOUT its CUDA kernels: {skip}", file=sys.stderr)
        ext = cpp_extension.CppExtension(
            "pdnet._C", sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags
        )
    else:
        nvcc_flags = ["-O3"]
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            nvcc_flags += [
                "-gencode=arch=compute_80,code=sm_80",
                "-gencode=arch=compute_86,code=sm_86",
                "-gencode=arch=compute_90,code=[sm_90,compute_90]",
            ]
        include_dirs = []
        try:  # torch's CUDA headers include cuBLAS / cuSPARSE headers from the nvidia wheels
            import nvidia

            for base in nvidia.__path__:
                include_dirs += sorted(str(d) for d in Path(base).glob("cu[0-9]*/include") if d.is_dir())
        except ImportError:
            pass
        print(f"pdnet: building the C++ extension with CUDA kernels (nvcc {nvcc}, torch CUDA "
              f"{torch.version.cuda})", file=sys.stderr)
        ext = cpp_extension.CUDAExtension(
            "pdnet._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[("PDNET_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
            extra_link_args=link_flags,
        )
    os.environ.setdefault("MAX_JOBS", str(_cpu_count()))  # read by torch's ninja build

    class _BuildExt(cpp_extension.BuildExtension):
        """torch's ninja build, with the objects in ``build/`` of the source tree.

        pip's editable install (PEP 660) hands build_ext a fresh temporary folder for the
        objects, so every re-install compiled everything again; a fixed folder per
        platform, Python and torch lets ninja skip the objects that are up to date.
        """

        def finalize_options(self):
            super().finalize_options()
            tag = f"{sysconfig.get_platform()}-{sys.implementation.cache_tag}-torch{torch.__version__}"
            self.build_temp = str(ROOT / "build" / f"temp.{tag}")

    return [ext], {"build_ext": _BuildExt.with_options(use_ninja=True)}


def _cpu_count() -> int:
    """CPU cores this process may use (its affinity mask, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _version() -> str:
    """``__version__`` of pdnet/__init__.py, the one place the version is written (read as
    text: importing pdnet here would need its dependencies at build time)."""
    text = (ROOT / "pdnet" / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, re.MULTILINE)
    if match is None:
        raise RuntimeError("pdnet/__init__.py has no line __version__ = \"...\"")
    return match.group(1)


ext_modules, cmdclass = _extension_modules()

setup(
    name="pdnet",
    version=_version(),
    description="PDNet (Part-Decoupling Network) for video portrait segmentation, with fused kernels",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"pdnet": ["assets/*.png", "assets/*.md"], "pdnet.configs": ["*.yaml"]},
    install_requires=[
        "torch>=2.11",
        "torchvision>=0.26",
        "numpy",
        "pillow",
        "tqdm",
        "pyyaml",
    ],
    extras_require={
        # cv2: the DAVIS toolkit's dilation, as a test oracle
        "test": ["pytest>=8", "pytest-timeout", "opencv-python-headless"],
        "data": ["scikit-image", "av"],
        "train": ["tensorboard"],
        # pdnet export --format onnx, the onnxruntime engine, the int8 (PT2E) path
        "deploy": ["onnx>=1.17", "onnxscript>=0.3", "onnxruntime>=1.20", "torchao>=0.12"],
        # pinned: `make lint` must give the same verdict everywhere
        "lint": ["ruff==0.16.9", "clang-format==23.1.1"],
    },
    entry_points={"console_scripts": ["pdnet = pdnet.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
