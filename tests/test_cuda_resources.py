"""Resource usage of the attention kernels in pdnet._C (bench/cuda_resources.py), without a GPU.

cuobjdump reads registers, stack, local and static shared memory from each cubin of the
built extension; pdnet._C.cuda_kernel_smem() gives each kernel's threads and dynamic
shared memory. No attention kernel may spill, and each must fit a block on sm_86 (RTX
3090: 99 KB of shared memory, 65536 registers). The first tests check the parser and
the checks on fixed inputs; the last two check the build in place (skipped when it has
no CUDA kernels or no cuobjdump is found).
"""
import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "cuda_resources.py"
_spec = importlib.util.spec_from_file_location("cuda_resources", SCRIPT)
R = sys.modules.setdefault("cuda_resources", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(R)

FWD = "_ZN5pdnet3ops12_GLOBAL__N_115attn_fwd_kernelI13__nv_bfloat16Li64EEEvPKT_S5_"
BWD = "_ZN5pdnet3ops12_GLOBAL__N_115attn_bwd_kernelIfLi128EEEvPKT_"
OTHER = "_Z11area_kernelPKfPf"
SAMPLE = f"""
Fatbin elf code:
================
arch = sm_86
code version = [1,8]

Resource usage:
 Common:
  GLOBAL:28 CONSTANT[4]:224
 Function {FWD}:
  REG:72 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:392 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function {OTHER}:
  REG:30 STACK:0 SHARED:32 LOCAL:0 CONSTANT[0]:388 TEXTURE:0 SURFACE:0 SAMPLER:0

Fatbin ptx code:
================
arch = sm_90
code version = [9,0]

Fatbin elf code:
================
arch = sm_90
code version = [1,8]

Resource usage:
 Function {BWD}:
  REG:255 STACK:16 SHARED:1024 LOCAL:8 CONSTANT[0]:396 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_parser_reads_each_cubin_and_skips_ptx():
    rows = R.parse_res_usage(SAMPLE)
    assert [(arch, name) for arch, name, _ in rows] == [(86, FWD), (86, OTHER), (90, BWD)]
    assert rows[2][2]["REG"] == 255 and rows[2][2]["STACK"] == 16 and rows[2][2]["LOCAL"] == 8
    assert rows[2][2]["SHARED"] == 1024 and rows[1][2]["SHARED"] == 32
    bare = SAMPLE[SAMPLE.index("Resource usage:") : SAMPLE.index("Fatbin ptx")]  # one cubin's output
    assert [(arch, name) for arch, name, _ in R.parse_res_usage(bare, 80)] == [(80, FWD), (80, OTHER)]


def test_names_demangled_or_from_the_mangled_name():
    assert R.mangled_base(FWD) == "attn_fwd_kernel"
    assert R.mangled_base(OTHER) == "area_kernel"
    assert R.mangled_base("plain_c_kernel") == "plain_c_kernel"
    demangled = (
        "void pdnet::ops::(anonymous namespace)::attn_fwd_kernel<__nv_bfloat16, 64>"
        "(__nv_bfloat16 const*, std::pair<int, int>, long)"
    )
    assert R.unqualified(demangled) == "attn_fwd_kernel<__nv_bfloat16, 64>"
    assert R.unqualified("void attn_k<float, 32>(float*)") == "attn_k<float, 32>"
    names = R.demangle([FWD, OTHER])  # c++filt when present, else the base names
    assert names[FWD] in ("attn_fwd_kernel<__nv_bfloat16, 64>", "attn_fwd_kernel")
    assert R.base_of(names[OTHER]) == "area_kernel"


def test_launch_names_normalised():
    same = ["attn_fwd_kernel<__nv_bfloat16, 64>", "attn_fwd_kernel<nv_bfloat16,64u>",
            "attn_fwd_kernel<__nv_bfloat16, (int)64>"]
    assert {R.normalise(n) for n in same} == {"attn_fwd_kernel<__nv_bfloat16,64>"}
    assert R.normalise("attn_x<c10::Half, 128l, true>") == "attn_x<Half,128,true>"
    assert R.normalise("attn_y<pdnet::(anonymous namespace)::Cfg<__half, 64> >") == "attn_y<Cfg<__half,64>>"
    assert R.normalise("attn_fwd_kernel<__half, 64>") != R.normalise("attn_fwd_kernel<__half, 128>")


def usage(name, arch=86, regs=64, stack=0, shared=0, local=0):
    return R.KernelUsage(arch, "_Z" + name, name, regs, stack, shared, local)


def test_checks_find_each_problem():
    good = [usage("attn_fwd<half, 64>"), usage("attn_fwd<half, 64>", arch=90, shared=1024), usage("other<float>")]
    launches = [R.Launch("attn_fwd<half, 64>", 128, 90000)]
    assert R.static_problems(good) == [] and R.launch_problems(good, launches) == []

    bad = [usage("attn_fwd<half, 64>", stack=8), usage("attn_bwd<half, 64>", local=4), usage("other<float>", local=4)]
    problems = R.static_problems(bad)
    assert len(problems) == 2 and "attn_fwd" in problems[0] and "spill" in problems[1]
    assert "no kernel named attn_*" in R.static_problems([usage("other<float>")])[0]
    assert "static shared memory" in R.static_problems([usage("attn_fwd<half, 64>", shared=101377)])[0]

    # sm_86's limit on the sm_86 cubin; on the others where the build has no sm_86 cubin
    assert R.launch_problems(good, [R.Launch("attn_fwd<half, 64>", 128, 101376 - 1023)]) == []
    over = R.launch_problems(good, [R.Launch("attn_fwd<half, 64>", 128, 101377)])
    assert len(over) == 1 and over[0].startswith("sm_86 ") and "101377 B dynamic" in over[0]
    over = R.launch_problems(good[1:2], [R.Launch("attn_fwd<half, 64>", 128, 101376 - 1023)])
    assert len(over) == 1 and over[0].startswith("sm_90 ") and "1024 B static" in over[0]
    regs = R.launch_problems([usage("attn_fwd<half, 64>", regs=129)], [R.Launch("attn_fwd<half, 64>", 512, 0)])
    assert "allocated registers" in regs[0]  # 136 (allocation unit) x 512 > 65536, though 129 x 512 > 65536 too
    assert R.block_registers(128, 512) == 65536 and R.block_registers(121, 512) == 65536
    assert "threads per block" in R.launch_problems(good, [R.Launch("attn_fwd<half, 64>", 2048, 0)])[0]
    missing = R.launch_problems(good, [R.Launch("attn_fwd<half, 128>", 128, 0), R.Launch("attn_gone<half>", 1, 0)])
    assert missing == ["pdnet._C.cuda_kernel_smem() reports 'attn_gone<half>', which no cubin of the extension holds"]
    assert R.launch_problems(good, [])[0].endswith("does not report this kernel's launch")


def test_mismatched_template_arguments_bound_by_the_base_name():
    kernels = [usage("attn_fwd<half, 64>", shared=100)]
    launches = [R.Launch("attn_fwd<half, 32>", 128, 1000), R.Launch("attn_fwd<half, 128>", 64, 101376 - 100)]
    assert R.match(kernels[0], launches) == (launches, False)
    assert R.launch_problems(kernels, launches) == []
    launches[1] = R.Launch("attn_fwd<half, 128>", 64, 101376 - 99)
    assert len(R.launch_problems(kernels, launches)) == 1
    exact = [R.Launch("attn_fwd<half,64>", 128, 2000), *launches]
    assert R.match(kernels[0], exact) == (exact[:1], True) and R.launch_problems(kernels, exact) == []


def test_launch_list_read_from_the_extension():
    class Module:
        @staticmethod
        def cuda_kernel_smem():
            return [("attn_fwd<__half, 64>", 128, 40960), ("attn_delta<float>", 256, 0)]

    want = [R.Launch("attn_fwd<__half, 64>", 128, 40960), R.Launch("attn_delta<float>", 256, 0)]
    assert R.read_launches(Module) == want
    with pytest.raises(RuntimeError, match=r"does not report .*cuda_kernel_smem\(\) .* is missing"):
        R.read_launches(object())
    Module.cuda_kernel_smem = staticmethod(lambda: [("attn_fwd<__half, 64>", 128)])
    with pytest.raises(RuntimeError, match=r"is not \(name: str, threads: int, bytes: int\)"):
        R.read_launches(Module)


@pytest.fixture(scope="module")
def build():
    """(pdnet._C, every kernel of its cubins), or a skip saying why there is nothing to read."""
    try:
        module = R.load_extension()
    except ImportError as exc:
        pytest.skip(f"pdnet._C is not built ({exc})")
    if not getattr(module, "with_cuda", 0):
        pytest.skip("pdnet._C was built without CUDA kernels (with_cuda == 0)")
    tool = R.find_cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not found (Triton's package, PATH, $CUDA_HOME/bin)")
    return module, R.read_usage(Path(module.__file__), tool)


def test_attention_kernels_do_not_spill(build):
    _, usage = build
    problems = R.static_problems(usage)
    if problems:
        pytest.fail("\n".join(problems) + "\n\n" + R.table(usage, None), pytrace=False)


def test_attention_kernels_fit_a_block_on_sm86(build):
    module, usage = build
    try:
        launches, error = R.read_launches(module), ""
    except RuntimeError as exc:
        launches, error = None, str(exc)
    if launches is None:
        pytest.fail(error, pytrace=False)
    problems = R.launch_problems(usage, launches)
    if problems:
        pytest.fail("\n".join(problems) + "\n\n" + R.table(usage, launches), pytrace=False)
