"""Peak throughput of the GPUs people train on, for the model FLOPs utilisation (MFU) of a training step.

MFU = achieved model FLOP/s (2 x the analytic multiply-accumulates of the sub-networks run, x3 for forward and
backward) / the device's dense peak for the matmul dtype.
"""
from __future__ import annotations

from typing import Optional

import torch

# Dense (no sparsity) peak throughput per GPU in TFLOPS, by the dtype of the matmuls. Sources: NVIDIA A100 Tensor
# Core GPU datasheet (A100 SXM4 and PCIe: FP32 19.5, TF32 156, BF16/FP16 312), NVIDIA H100 Tensor Core GPU datasheet
# (SXM: FP32 67, TF32 494.5, BF16/FP16 989.5; PCIe: 51, 378, 756; NVL: 60, 417.5, 835.5, the sheet's "with sparsity"
# figures halved), NVIDIA H200 datasheet (SXM as H100 SXM; NVL: 60, 417.5, 835.5).
PEAK_TFLOPS = {
    "H100 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "H100": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    "H200 NVL": {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5},
    "H200": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
}


def matmul_dtype_name(amp_dtype: Optional[torch.dtype]) -> str:
    """'bf16', 'fp16', 'tf32' (fp32 with TF32 matmuls allowed) or 'fp32'."""
    if amp_dtype is torch.bfloat16:
        return "bf16"
    if amp_dtype is torch.float16:
        return "fp16"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"


def peak_flops(device_name: str, dtype_name: str) -> Optional[float]:
    """The dense peak FLOP/s of the GPU named ``device_name`` (``torch.cuda.get_device_name()``) for matmuls in
    ``dtype_name``, or None when it is not in ``PEAK_TFLOPS``."""
    for key, peaks in PEAK_TFLOPS.items():  # the most specific names come first
        if key.replace(" ", "").lower() in device_name.replace(" ", "").replace("-", "").lower():
            return peaks[dtype_name] * 1e12
    return None


def step_flops(model, subnets, batch: int, gmacs: Optional[dict] = None) -> float:
    """Model FLOPs of one training step: 2 x 3 x the analytic MACs (``supervit.models.flops``) of each sub-network
    run (None entries skipped), times the batch.

    ``gmacs``: a dict the caller keeps, ``{subnet: GMACs}``, filled as sub-networks are met (a training loop then
    computes each sub-network's MACs once).
    """
    from supervit.models import flops

    gmacs = {} if gmacs is None else gmacs
    for subnet in subnets:
        if subnet is not None and subnet not in gmacs:
            gmacs[subnet] = flops(model, *subnet)
    return 6e9 * batch * sum(gmacs[s] for s in subnets if s is not None)
