"""Installs the ``supervit`` package and builds its compiled extension ``supervit._C`` from csrc/.

The extension is C++/OpenMP always; the CUDA sources are added when torch is a CUDA build and a CUDA toolkit
(nvcc under CUDA_HOME) is found. Environment:

* ``SUPERVIT_NO_CUDA=1``: build the C++ (CPU) kernels only;
* ``SUPERVIT_NO_EXT=1``: skip the extension (the package then runs on the pure-PyTorch reference backend);
* ``SUPERVIT_REQUIRE_EXT=1``: a failed extension build fails the install (by default it only warns);
* ``TORCH_CUDA_ARCH_LIST`` (default "9.0"), ``MAX_JOBS``: as for any torch extension.

Build with ``pip install --no-build-isolation -e .`` so that the torch of the environment compiles it.
"""
import os
import shutil
import sys

from setuptools import find_packages, setup

CPU_SOURCES = ["csrc/registration.cpp", "csrc/attention_math.cpp", "csrc/attention_cpu.cpp", "csrc/tokens_cpu.cpp"]
CUDA_SOURCES = ["csrc/cuda_kernels.cu", "csrc/ops_cuda.cpp"]


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _say(msg):
    print(f"supervit setup: {msg}", file=sys.stderr)


def _cuda_wanted(cpp_extension):
    """(use CUDA, why not) for this build."""
    import torch

    if _flag("SUPERVIT_NO_CUDA"):
        return False, "SUPERVIT_NO_CUDA is set"
    if torch.version.cuda is None:
        return False, "torch is not a CUDA build"
    home = cpp_extension.CUDA_HOME
    if not home or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return False, "no CUDA toolkit found (set CUDA_HOME to a directory with bin/nvcc)"
    return True, ""


def _extension_and_cmdclass():
    """([Extension], {"build_ext": ...}), or ([], {}) when the extension cannot or should not be built."""
    if _flag("SUPERVIT_NO_EXT"):
        _say("SUPERVIT_NO_EXT is set: not building supervit._C (the reference backend will be used)")
        return [], {}
    try:
        from torch.utils import cpp_extension
    except Exception as err:  # noqa: BLE001 - torch missing or broken: install the pure-Python package
        _say(f"torch is not importable ({err}); not building supervit._C. Install torch first and build with "
             "`pip install --no-build-isolation -e .`")
        return [], {}

    use_cuda, why_not = _cuda_wanted(cpp_extension)
    cxx_flags = ["-O3", "-g0", "-fopenmp"]
    kwargs = dict(
        name="supervit._C",
        sources=list(CPU_SOURCES),
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
    )
    if use_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        kwargs["sources"] += CUDA_SOURCES
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        ext = cpp_extension.CUDAExtension(**kwargs)
        _say(f"building supervit._C with CUDA kernels (TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
    else:
        ext = cpp_extension.CppExtension(**kwargs)
        _say(f"building supervit._C with CPU kernels only ({why_not})")

    base = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)

    class OptionalBuildExt(base):
        """A failed build warns (the package falls back to the reference backend) unless SUPERVIT_REQUIRE_EXT."""

        def run(self):
            try:
                super().run()
            except Exception as err:  # noqa: BLE001 - compiler missing, toolkit mismatch, compile error
                if _flag("SUPERVIT_REQUIRE_EXT"):
                    raise
                _say(f"WARNING: building supervit._C failed ({type(err).__name__}: {err}); the package is "
                     "installed without it and runs on the reference backend")

    return [ext], {"build_ext": OptionalBuildExt}


ext_modules, cmdclass = _extension_and_cmdclass()

setup(
    name="supervit",
    version="0.1.0",
    description="Super Vision Transformer: one ViT, 12 operating points, fused token-pruning kernels",
    packages=find_packages(include=["supervit", "supervit.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "timm>=1.0", "tqdm"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
