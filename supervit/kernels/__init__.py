"""SuperViT ops: attention with CLS score, top-k keep, token gather, fused pruning (contract in contract.py)."""
from .dispatch import BACKEND_NAMES, available_backends, backend_for, backend_status, select_backend
from .ops import attention, gather_tokens, keep_topk, prune_tokens
from .contract import keep_count

__all__ = [
    "attention", "keep_topk", "gather_tokens", "prune_tokens", "keep_count",
    "BACKEND_NAMES", "available_backends", "backend_for", "backend_status", "select_backend",
]
