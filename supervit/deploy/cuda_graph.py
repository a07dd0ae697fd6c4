"""CUDA-graph inference for one sub-network at a fixed batch: capture once, replay without host overhead.

At batch 1 the host side of a forward (Python, the custom-op layer, kernel launches) costs more than the GPU work;
a captured graph replays every kernel with one launch. Usage::

    graph = CudaGraphSubnet(model, img_size=224, keep_ratio=0.7, batch=1)
    logits = graph(images)        # images [1, 3, 224, 224] on the model's GPU; returns a fresh tensor

The model must be in eval mode on a CUDA device; the input shape, dtype and device are fixed at capture.
"""
from __future__ import annotations

import torch
from torch import nn

from . import DeployError


def _check_cuda(model: nn.Module) -> torch.device:
    if not torch.cuda.is_available():
        raise DeployError("CUDA graphs need a CUDA GPU, and torch.cuda.is_available() is False here; use mode "
                          "'eager' or 'compile' on this machine")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cuda")
    if device.type != "cuda":
        raise DeployError(f"CUDA graphs need the model on a CUDA device, it is on {device}; call model.cuda() first")
    return device


def capture_graph(fn, device: torch.device, warmup: int = 3):
    """(CUDA graph, its static output) of ``fn()``, captured in inference mode after ``warmup`` eager calls on a
    side stream (lazy initialisation, autotuning and the allocator settle outside the capture)."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    with torch.inference_mode(), torch.cuda.graph(graph):
        output = fn()
    torch.cuda.synchronize(device)
    return graph, output


class CudaGraphSubnet:
    """Sub-network ``(img_size, keep_ratio)`` of ``model`` captured as a CUDA graph at a fixed input.

    Args:
        model: a super-network in eval mode on a CUDA device.
        img_size, keep_ratio: the sub-network.
        batch: the fixed batch size of the graph.
        dtype: input dtype (the model's weights must match, or run under your own autocast at capture).
        warmup: eager calls on a side stream before capture (lazy initialisation, autotuning, allocator).
    """

    def __init__(self, model: nn.Module, img_size: int, keep_ratio: float, batch: int = 1,
                 dtype: torch.dtype = torch.float32, warmup: int = 3):
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise DeployError(f"batch must be an int >= 1, got {batch!r}")
        self.device = _check_cuda(model)
        if model.training:
            raise DeployError("CUDA-graph capture needs the model in eval mode (call model.eval()): training "
                              "mode draws random numbers (drop-path) that a replay would repeat")
        self.model, self.subnet = model, model._check_subnet(img_size, keep_ratio)
        side = model.img_sizes[-1]
        self.static_input = torch.zeros(batch, model.in_chans, side, side, device=self.device, dtype=dtype)
        self.graph, self.static_output = capture_graph(self._forward, self.device, warmup)

    def _forward(self) -> torch.Tensor:
        return self.model(self.static_input, img_size=self.subnet[0], keep_ratio=self.subnet[1])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Logits of ``images`` (same shape/dtype/device as at capture); a copy, safe to keep across calls."""
        self.replay_into(images)
        return self.static_output.clone()

    def replay_into(self, images: torch.Tensor) -> torch.Tensor:
        """Copy ``images`` into the static input and replay; returns the static output (overwritten next call)."""
        if images.shape != self.static_input.shape or images.dtype != self.static_input.dtype:
            raise DeployError(f"the graph was captured for input {tuple(self.static_input.shape)} "
                              f"{self.static_input.dtype}, got {tuple(images.shape)} {images.dtype}")
        self.static_input.copy_(images, non_blocking=True)
        self.graph.replay()
        return self.static_output
