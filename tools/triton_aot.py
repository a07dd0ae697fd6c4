"""Ahead-of-time compile of the Triton kernels for a GPU target, on a machine without a GPU.

The launches are captured from the real wrappers (``triton_attention``, ``triton_prune``) called on ``meta``
tensors, so the compiled signature is exactly what a GPU run would launch; an autotuned launch is compiled once per config
that the length filter keeps. Each compile reports the registers, local memory (register spills) and shared memory per block that
``ptxas`` assigned, read from the cubin with ``cuobjdump --dump-resource-usage``.

    python tools/triton_aot.py             # every kernel and config for sm_90, a table on stdout

Needs triton with its NVIDIA backend (bundled ptxas / cuobjdump); must not run under TRITON_INTERPRET=1.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
import sys
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction

from supervit.kernels import triton_attention, triton_prune

_POINTER_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64",
                  torch.int32: "i32"}


@dataclasses.dataclass
class Launch:
    """One captured kernel launch: the kernel, its runtime arguments and its launch-time constexprs/options."""
    kernel: JITFunction
    args: dict
    meta: dict


@dataclasses.dataclass
class Resources:
    """What ptxas assigned to one compiled kernel (per thread: registers, local bytes; per block: shared)."""
    kernel: str
    case: str
    config: str
    registers: int
    local_bytes: int  # register spills (and stack arrays) live here
    shared_bytes: int


@contextlib.contextmanager
def capture_launches():
    """Within the block, kernel launches are recorded in the yielded list instead of being run."""
    launches: list[Launch] = []

    def record(kernel, args, kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
        names = kernel.arg_names
        runtime = dict(zip(names, args))
        runtime.update({k: v for k, v in kwargs.items() if k in names})
        options = {k: v for k, v in kwargs.items() if k not in names}
        launches.append(Launch(kernel, runtime, options))

    def jit_run(self, *args, **kwargs):
        record(self, args, kwargs)

    def tuner_run(self, *args, **kwargs):  # one launch per kept config, through any heuristics under the tuner
        configs = self.configs
        if self.early_config_prune:
            configs = self.early_config_prune(self.configs, dict(zip(self.arg_names, args)), **kwargs)
        for config in configs:
            self.fn.run(*args, **kwargs, **config.all_kwargs())

    saved = JITFunction.run, Autotuner.run
    JITFunction.run, Autotuner.run = jit_run, tuner_run
    try:
        yield launches
    finally:
        JITFunction.run, Autotuner.run = saved


def _signature(launch: Launch, constexprs: dict):
    """(signature, attrs) for ASTSource: pointer / i32 / i64 / fp32 types, 16-divisibility as the JIT would mark it."""
    signature, attrs = {}, {}
    for i, name in enumerate(launch.kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        value = launch.args[name]
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _POINTER_TYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"argument {name} of {launch.kernel.__name__} has unsupported type {type(value)}")
        elif isinstance(value, int):
            signature[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32"
    return signature, attrs


def _cuobjdump() -> str:
    nvidia = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return nvidia if os.path.exists(nvidia) else "cuobjdump"


def _resource_usage(cubin: bytes) -> tuple[int, int, int]:
    """(registers, local bytes, static shared bytes) of the one function in ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    fields = dict(re.findall(r"(REG|LOCAL|SHARED):(\d+)", text))
    return int(fields["REG"]), int(fields["LOCAL"]), int(fields["SHARED"])


def compile_launch(launch: Launch, case: str, arch: int = 90) -> Resources:
    """Compile ``launch`` for ``cuda:arch``; its resources."""
    constexprs = {k: v for k, v in launch.args.items() if k in _constexpr_names(launch.kernel)}
    options = {k: launch.meta[k] for k in ("num_warps", "num_stages") if launch.meta.get(k) is not None}
    label = ",".join([f"{k}={v}" for k, v in constexprs.items() if k.startswith("BLOCK") or k == "ONE_KEY_BLOCK"]
                     + [f"{k}={v}" for k, v in options.items()])
    signature, attrs = _signature(launch, constexprs)
    compiled = triton.compile(ASTSource(launch.kernel, signature, constexprs, attrs),
                              target=GPUTarget("cuda", arch, 32), options=options)
    regs, local, static_shared = _resource_usage(compiled.asm["cubin"])
    return Resources(launch.kernel.__name__, case, label, regs, local, compiled.metadata.shared + static_shared)


def _constexpr_names(kernel: JITFunction) -> set[str]:
    return {p.name for p in kernel.params if p.is_constexpr}


def _meta(*shape, dtype):
    return torch.empty(shape, device="meta", dtype=dtype)


def launch_cases(dtypes=(torch.bfloat16, torch.float32), tokens: int = 197):
    """(case name, launches) for every kernel the wrappers launch at the models' width (H=6, D=64, C=384), N=tokens.

    q, k, v are views of one fused qkv projection and out / grad_out are token-major, as the models pass them.
    ``tokens`` is the sequence length; it picks the autotune configs that the length filter keeps and the
    pruning kernels' sort width.
    """
    cases = []
    batch, heads, dim, channels = 8, 6, 64, 384
    for dtype in dtypes:
        name = _POINTER_TYPES[dtype]
        qkv = _meta(batch, tokens, 3, heads, dim, dtype=dtype).permute(2, 0, 3, 1, 4)  # [3, B, H, N, D] view
        q, k, v = qkv.unbind(0)
        out = _meta(batch, tokens, heads, dim, dtype=dtype).transpose(1, 2)  # token-major [B, H, N, D]
        lse = _meta(batch, heads, tokens, dtype=torch.float32)
        for score in (True, False):
            with capture_launches() as fwd:
                triton_attention.attention_forward(q, k, v, dim ** -0.5, score)
            cases.append((f"{name} forward{' +score' if score else ''} N={tokens}", fwd))
            grad_score = _meta(batch, tokens - 1 if score else 0, dtype=torch.float32)
            with capture_launches() as bwd:
                triton_attention.attention_backward(out, grad_score, q, k, v, out, lse, dim ** -0.5, score)
            cases.append((f"{name} backward{' +score grad' if score else ''} N={tokens}", bwd))
    x = _meta(batch, tokens, channels, dtype=torch.bfloat16)
    score = _meta(batch, tokens - 1, dtype=torch.float32)
    kept = triton.cdiv(7 * tokens, 10)
    idx = _meta(batch, kept, dtype=torch.int64)
    with capture_launches() as prune:
        triton_prune.prune_tokens_forward(x, score, kept)
        triton_prune.keep_topk(score, kept)
        triton_prune.gather_tokens(x, idx)
        triton_prune.gather_tokens_backward(_meta(batch, kept + 1, channels, dtype=torch.bfloat16), idx, tokens)
    cases.append((f"bf16 prune_tokens / keep_topk / gather_tokens fwd+bwd N={tokens}", prune))
    return cases


def compile_all(arch: int = 90, lengths=(197,), first_config_only: bool = False) -> list[Resources]:
    """Resources of every captured launch at each sequence length (each kept autotune config, or the first only)
    for ``cuda:arch``."""
    rows = []
    for case, launches in (c for tokens in lengths for c in launch_cases(tokens=tokens)):
        seen = set()
        for launch in launches:
            if first_config_only and launch.kernel in seen:
                continue
            seen.add(launch.kernel)
            rows.append(compile_launch(launch, case, arch))
    return rows


def format_table(rows: list[Resources]) -> str:
    """A markdown table of ``rows``."""
    lines = ["| kernel | case | config | registers | local (spill) bytes | shared bytes |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.kernel} | {r.case} | {r.config} | {r.registers} | {r.local_bytes} | {r.shared_bytes} |"
              for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90 = sm_90)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[197], help="sequence lengths of the launches")
    parser.add_argument("--first-config-only", action="store_true", help="one autotune config per launch")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("triton_aot: unset TRITON_INTERPRET; interpreted kernels cannot be compiled", file=sys.stderr)
        return 2
    print(f"triton {triton.__version__}, target sm_{args.arch}")
    print(format_table(compile_all(args.arch, args.tokens, args.first_config_only)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
