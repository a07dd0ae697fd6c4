"""Installs the ``supervit`` package and builds its compiled extension ``supervit._C`` from csrc/.

The extension is C++/OpenMP always; the CUDA sources are added when torch is a CUDA build and a CUDA toolkit
(nvcc under CUDA_HOME) is found. Environment:

* ``SUPERVIT_NO_CUDA=1``: build the C++ (CPU) kernels only;
* ``SUPERVIT_NO_EXT=1``: skip the extension (the package then runs on the pure-PyTorch reference backend);
* ``SUPERVIT_REQUIRE_EXT=1``: a failed extension build fails the install (by default it only warns);
* ``TORCH_CUDA_ARCH_LIST`` (default "9.0"), ``MAX_JOBS``: as for any torch extension.

Build with ``pip install --no-build-isolation -e .`` so that the torch of the environment compiles it.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

CPU_SOURCES = ["csrc/registration.cpp", "csrc/attention_common.cpp", "csrc/attention_cpu.cpp", "csrc/tokens_cpu.cpp"]
CUDA_SOURCES = ["csrc/cuda_kernels.cu", "csrc/ops_cuda.cpp"]


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _say(msg):
    print(f"supervit setup: {msg}", file=sys.stderr)


def _find_cuda_home():
    """A CUDA toolkit directory holding bin/nvcc and include/cuda_runtime.h, or None.

    torch derives CUDA_HOME from ``which nvcc`` when the variable is unset, which is wrong when nvcc is a wrapper
    script (e.g. /usr/local/bin/nvcc -> /usr/local): follow the real nvcc and check the headers instead.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for home in candidates:
        if (home and os.path.isfile(os.path.join(home, "bin", "nvcc"))
                and os.path.isfile(os.path.join(home, "include", "cuda_runtime.h"))):
            return home
    return None


def _cuda_home_for_build():
    """(CUDA toolkit directory, "") when the CUDA sources should be built, else (None, why not)."""
    import torch

    if _flag("SUPERVIT_NO_CUDA"):
        return None, "SUPERVIT_NO_CUDA is set"
    if torch.version.cuda is None:
        return None, "torch is not a CUDA build"
    home = _find_cuda_home()
    if home is None:
        return None, "no CUDA toolkit found (set CUDA_HOME to a directory with bin/nvcc and include/)"
    return home, ""


def _extension(cpp_extension, cuda_home):
    """The supervit._C extension: C++/OpenMP sources, plus the CUDA ones when ``cuda_home`` is given."""
    kwargs = dict(
        name="supervit._C",
        sources=list(CPU_SOURCES),
        extra_compile_args={"cxx": ["-O3", "-g0", "-fopenmp"]},
        extra_link_args=["-fopenmp"],
    )
    if not cuda_home:
        return cpp_extension.CppExtension(**kwargs)
    kwargs["sources"] += CUDA_SOURCES
    kwargs["extra_compile_args"]["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
    return cpp_extension.CUDAExtension(**kwargs)


def _extension_and_cmdclass():
    """([Extension], {"build_ext": ...}), or ([], {}) when the extension cannot or should not be built."""
    if _flag("SUPERVIT_NO_EXT"):
        _say("SUPERVIT_NO_EXT is set: not building supervit._C (the reference backend will be used)")
        return [], {}
    try:
        import torch  # noqa: F401
    except Exception as err:  # noqa: BLE001 - torch missing or broken: install the pure-Python package
        _say(f"torch is not importable ({err}); not building supervit._C. Install torch first and build with "
             "`pip install --no-build-isolation -e .`")
        return [], {}

    cuda_home, why_not = _cuda_home_for_build()
    if cuda_home:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension when it is imported
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    from torch.utils import cpp_extension

    if cuda_home:
        cpp_extension.CUDA_HOME = cuda_home
        _say(f"building supervit._C with CUDA kernels (CUDA_HOME={cuda_home}, "
             f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
    else:
        _say(f"building supervit._C with CPU kernels only ({why_not})")

    base = cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)

    class OptionalBuildExt(base):
        """A failed CUDA build retries CPU-only; a failed CPU build warns (the package then runs on the reference
        backend). SUPERVIT_REQUIRE_EXT=1 makes any failure fatal."""

        def run(self):
            inplace = self.inplace  # setuptools clears it while building and restores it only on success
            try:
                super().run()
                return
            except Exception as err:  # noqa: BLE001 - compiler missing, toolkit mismatch, compile error
                if _flag("SUPERVIT_REQUIRE_EXT"):
                    raise
                failure = f"{type(err).__name__}: {err}"
            if cuda_home:
                _say(f"WARNING: building supervit._C with CUDA failed ({failure}); retrying with CPU kernels only")
                # A fresh command (the failed one patched its compiler object) with the same options and paths.
                retry = type(self)(self.distribution)
                retry.__dict__.update({k: v for k, v in self.__dict__.items() if k != "compiler"})
                retry.compiler, retry.inplace = None, inplace
                cpu_only = _extension(cpp_extension, None)
                for ext in retry.extensions:  # keep the objects (setuptools annotated them), swap the CPU build in
                    for field in ("sources", "include_dirs", "library_dirs", "libraries", "runtime_library_dirs",
                                  "define_macros", "extra_compile_args", "extra_link_args", "language"):
                        setattr(ext, field, getattr(cpu_only, field))
                try:
                    base.run(retry)
                    return
                except Exception as err:  # noqa: BLE001
                    failure = f"{type(err).__name__}: {err}"
            _say(f"WARNING: building supervit._C failed ({failure}); the package is installed without it and "
                 "runs on the reference backend")

    return [_extension(cpp_extension, cuda_home)], {"build_ext": OptionalBuildExt}


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
