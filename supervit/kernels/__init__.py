"""SuperViT ops: attention with CLS score, top-k keep, token gather, fused pruning (see DESIGN.md)."""
from .dispatch import BACKEND_NAMES, available_backends, backend_status, select_backend
from .ops import attention, gather_tokens, keep_topk, prune_tokens
from .reference import keep_count

__all__ = [
    "attention", "keep_topk", "gather_tokens", "prune_tokens", "keep_count",
    "BACKEND_NAMES", "available_backends", "backend_status", "select_backend",
]
