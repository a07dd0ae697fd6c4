"""The SuperViT super-network: one ViT, several input sizes (own position tables) x token keep rates."""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from timm.layers import trunc_normal_

from ..kernels.validation import check_keep_ratio, is_plain_int
from .features import FeaturesMixin
from .layers import Block, PatchEmbed
from .subnet import check_subnet, model_subnets, untrained_keep_message


def resize_to(x: torch.Tensor, img_size: int) -> torch.Tensor:
    """Bilinear resize (align_corners=True, no antialias) of [B, C, H, W] to img_size; identity when equal."""
    if x.shape[-2:] == (img_size, img_size):
        return x
    return F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=True)


torch.fx.wrap("resize_to")  # a leaf of FX graphs: its shape test needs concrete sizes


def guard_traced_args(x, names: tuple, given: tuple, traced: tuple):
    """``x`` unchanged; raises when an FX graph traced with ``traced`` values is called with other ones.

    FX traces one sub-network (``set_subnet``'s, or the ``concrete_args``): arguments left symbolic by the tracer
    are checked at run time by this leaf instead of being silently ignored.
    """
    for name, value, want in zip(names, given, traced):
        if value is not None and value != want:
            raise ValueError(f"this FX graph was traced with {name}={want!r}, got {value!r}; trace another graph "
                             "(set_subnet before tracing, or concrete_args)")
    return x


torch.fx.wrap("guard_traced_args")


class SuperVisionTransformer(FeaturesMixin, nn.Module):
    """Vision transformer serving ``len(img_sizes) x len(keep_ratios)`` sub-networks with shared weights.

    The input (crops of the largest size) is resized to the sub-network's ``img_size`` inside ``forward``
    (bilinear, align_corners=True); each size has its own learned position table ``pos_embed_list.i`` of shape
    (1, 1 + (img_size / patch)^2, C). In the blocks of ``prune_layers``, when ``keep_ratio < 1``, only CLS and the
    ``min(ceil(keep_ratio * N), N - 1)`` patch tokens with the highest head-mean CLS attention are kept for the MLP
    and the following blocks. A keep ratio outside ``keep_ratios``, or an input that is neither the largest size
    nor the sub-network's size, runs but warns once per model (the weights were not trained for it).

    Args:
        img_sizes: input sides, ascending; each a multiple of ``patch_size``.
        keep_ratios: the trained keep rates (``forward`` accepts any value in (0, 1]).
        prune_layers: 0-based indices of the pruning blocks.
        patch_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio, qkv_bias: ViT shape.
        drop_path_rate: stochastic depth, linear from 0 to this over the blocks.
        norm_eps: LayerNorm epsilon.
        skip_lam: residual branches divided by this.
        patch_embed: module mapping [B, in_chans, S, S] -> [B, C, S/p, S/p]; a Conv2d patchify by default.
    """

    num_prefix_tokens = 1  # CLS
    global_pool = "token"

    def __init__(self, img_sizes=(128, 160, 192, 224), keep_ratios=(0.5, 0.7, 1.0), prune_layers=(3, 6, 9),
                 patch_size=16, in_chans=3, num_classes=1000, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
                 qkv_bias=True, drop_path_rate=0.0, norm_eps=1e-6, skip_lam=1.0, patch_embed=None):
        super().__init__()
        check_config(img_sizes, keep_ratios, prune_layers, patch_size, in_chans, num_classes, embed_dim, depth)
        self.img_sizes = tuple(int(s) for s in img_sizes)
        self.keep_ratios = tuple(float(r) for r in keep_ratios)
        self.prune_layers = tuple(int(i) for i in prune_layers)
        self.arch_kwargs = dict(  # what model_config() records; JSON-able plain values
            img_sizes=list(self.img_sizes), keep_ratios=list(self.keep_ratios), prune_layers=list(self.prune_layers),
            patch_size=int(patch_size), in_chans=int(in_chans), num_classes=int(num_classes),
            embed_dim=int(embed_dim), depth=int(depth), num_heads=int(num_heads), mlp_ratio=float(mlp_ratio),
            qkv_bias=bool(qkv_bias), drop_path_rate=float(drop_path_rate), norm_eps=float(norm_eps),
            skip_lam=float(skip_lam))
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = self.num_features = self.head_hidden_size = embed_dim
        self.mlp_ratio = mlp_ratio
        self.grad_checkpointing = False
        self._warned: set = set()
        self.patch_embed = patch_embed if patch_embed is not None else PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed_list = nn.ParameterList(
            [nn.Parameter(torch.zeros(1, 1 + (s // patch_size) ** 2, embed_dim)) for s in self.img_sizes])
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i], norm_eps, skip_lam) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.default_subnet = (self.img_sizes[-1], 1.0)
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size)
                             for i in range(depth)]
        self._init_weights()

    # ------------------------------------------------------------------------------------------------------------
    def _init_weights(self):
        for pos in self.pos_embed_list:
            trunc_normal_(pos, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @torch.jit.ignore
    def no_weight_decay(self):
        """Parameters excluded from weight decay beside the 1-D ones (the reference decays the position tables)."""
        return {"cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        """Parameter groups for layer-wise lr decay: stem (patch embed, CLS, position tables), each block, head."""
        return dict(stem=r"^cls_token|^pos_embed_list|^patch_embed",
                    blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute each block's activations in the backward pass (training only) instead of storing them."""
        self.grad_checkpointing = bool(enable)

    def subnets(self):
        """All ``Subnet(img_size, keep_ratio)`` operating points, grid-major."""
        return model_subnets(self)

    def set_subnet(self, img_size: int, keep_ratio: float = 1.0):
        """Make (img_size, keep_ratio) what a plain ``model(x)`` runs."""
        self.default_subnet = self._check_subnet(img_size, keep_ratio)
        return self

    def get_classifier(self):
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None):
        """New classifier of ``num_classes`` outputs (0: none, ``forward`` then returns the CLS features)."""
        if not is_plain_int(num_classes) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
        if global_pool not in (None, "token"):
            raise ValueError(f"global_pool must be 'token' (the CLS token) or None, got {global_pool!r}")
        self.num_classes = num_classes
        self.head = self.new_classifier(num_classes)

    def new_classifier(self, num_classes: int) -> nn.Module:
        """Linear(embed_dim, num_classes) (Identity for 0) on the model's device and dtype, in its train/eval mode."""
        if num_classes == 0:
            return nn.Identity()
        head = nn.Linear(self.embed_dim, num_classes, device=self.cls_token.device, dtype=self.cls_token.dtype)
        return head.train(self.training)

    # ------------------------------------------------------------------------------------------------------------
    def _check_subnet(self, img_size, keep_ratio):
        return check_subnet(self, img_size, keep_ratio)

    def _check_input(self, x):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_chans:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be an image batch [B, {self.in_chans}, H, W], got {shape}")

    def _warn_once(self, key, message: str):
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, UserWarning, stacklevel=4)

    def _warn_untrained(self, x, img_size: int, keep_ratio: float):
        if keep_ratio not in self.keep_ratios:
            self._warn_once(("keep_ratio", keep_ratio), untrained_keep_message(keep_ratio, self.keep_ratios))
        side, largest = tuple(x.shape[-2:]), self.img_sizes[-1]
        if side not in ((largest, largest), (img_size, img_size)):
            self._warn_once(("input", side), (
                f"input of {side[0]}x{side[1]} pixels: the model expects {largest}x{largest} crops and resizes them "
                f"to img_size inside forward (bilinear, align_corners=True); this input is resized to {img_size} "
                "too, a preprocessing the weights were not trained or evaluated with"))

    def _resolve(self, x, img_size, keep_ratio):
        """(x, img_size, keep_ratio) of a call, checked; the sub-network from the arguments or ``set_subnet``."""
        tracing = isinstance(x, torch.fx.Proxy)
        default_size, default_ratio = self.default_subnet
        if tracing:  # arguments the tracer left symbolic take set_subnet's value, checked at run time
            symbolic = [(name, value, default) for name, value, default in
                        (("img_size", img_size, default_size), ("keep_ratio", keep_ratio, default_ratio))
                        if isinstance(value, torch.fx.Proxy)]
            if symbolic:
                names, given, traced = zip(*symbolic)
                x = guard_traced_args(x, names, given, traced)
            img_size = None if isinstance(img_size, torch.fx.Proxy) else img_size
            keep_ratio = None if isinstance(keep_ratio, torch.fx.Proxy) else keep_ratio
        else:
            self._check_input(x)
        img_size = default_size if img_size is None else img_size
        keep_ratio = default_ratio if keep_ratio is None else keep_ratio
        img_size, keep_ratio = self._check_subnet(img_size, keep_ratio)
        if not tracing and not torch.compiler.is_compiling():
            self._warn_untrained(x, img_size, keep_ratio)
        return x, img_size, keep_ratio

    def resize_input(self, x, img_size: int):
        """Bilinear resize (align_corners=True, no antialias) of [B, C, H, W] to img_size; identity when equal."""
        return resize_to(x, img_size)

    def embed(self, x, img_size: int):
        """Patch grid [B, C, g, g] of the resized input."""
        return self.patch_embed(resize_to(x, img_size))

    def tokens_with_position(self, grid, img_size: int):
        """[B, C, g, g] -> [B, 1 + g*g, C] with CLS prepended and the size's own position table added."""
        tokens = grid.flatten(2).transpose(1, 2)  # [B, g*g, C]
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed_list[self.img_sizes.index(img_size)]

    def run_block(self, i: int, x, keep_ratio: float):
        """Block i (pruning when it is one of ``prune_layers``): (x [B, n, C], kept indices [B, k] or None)."""
        block = self.blocks[i]
        ratio = keep_ratio if i in self.prune_layers else None
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, ratio, use_reentrant=False)
        return block(x, ratio)

    def run_blocks(self, x, keep_ratio: float):
        """Blocks with pruning; returns (x [B, n, C], kept indices of each pruning block)."""
        kept = []
        for i in range(len(self.blocks)):
            x, idx = self.run_block(i, x, keep_ratio)
            if idx is not None:
                kept.append(idx)
        return x, kept

    def forward_features(self, x, img_size: int | None = None, keep_ratio: float | None = None):
        """Normalised tokens [B, n, C] (CLS first) of sub-network (img_size, keep_ratio)."""
        return self.forward_trace(x, img_size, keep_ratio)[0]

    def forward_trace(self, x, img_size=None, keep_ratio=None):
        """(normalised tokens [B, n, C], list of kept index tensors [B, k_i] per pruning block)."""
        x, img_size, keep_ratio = self._resolve(x, img_size, keep_ratio)
        x = self.tokens_with_position(self.embed(x, img_size), img_size)
        x, kept = self.run_blocks(x, keep_ratio)
        return self.norm(x), kept

    def forward_head(self, x, pre_logits: bool = False):
        """Tokens [B, n, C] -> logits [B, num_classes] from CLS (its features [B, C] when ``pre_logits``)."""
        cls = x[:, 0]
        return cls if pre_logits else self.head(cls)

    def forward(self, x, img_size: int | None = None, keep_ratio: float | None = None):
        """Logits [B, num_classes] of sub-network (img_size, keep_ratio); defaults from ``set_subnet``."""
        return self.forward_head(self.forward_features(x, img_size, keep_ratio))

    def sequence_lengths(self, img_size: int, keep_ratio: float):
        """Token counts (CLS included) after each pruning block, from the keep rule alone."""
        from ..kernels import keep_count
        n = 1 + (img_size // self.patch_size) ** 2
        lengths = []
        for _ in self.prune_layers:
            if keep_ratio < 1.0:
                n = keep_count(n, keep_ratio) + 1
            lengths.append(n)
        return lengths


def _positive_int(name: str, value) -> int:
    if not is_plain_int(value) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def check_config(img_sizes, keep_ratios, prune_layers, patch_size, in_chans, num_classes, embed_dim, depth):
    """Constructor arguments of ``SuperVisionTransformer``; each error names the argument and what it accepts."""
    for name, value in (("patch_size", patch_size), ("in_chans", in_chans), ("embed_dim", embed_dim),
                        ("depth", depth)):
        _positive_int(name, value)
    if not is_plain_int(num_classes) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0: no classifier), got {num_classes!r}")
    sizes = list(img_sizes) if isinstance(img_sizes, (list, tuple)) else None
    if not sizes or any(not is_plain_int(s) or s < patch_size or s % patch_size for s in sizes):
        raise ValueError(f"img_sizes must be a non-empty list of ints, each a positive multiple of patch_size "
                         f"{patch_size}, got {img_sizes!r}")
    if sizes != sorted(set(sizes)):
        raise ValueError(f"img_sizes must be strictly ascending (the largest is the full sub-network), got {img_sizes!r}")
    ratios = list(keep_ratios) if isinstance(keep_ratios, (list, tuple)) else None
    if not ratios:
        raise ValueError(f"keep_ratios must be a non-empty list of numbers in (0, 1], got {keep_ratios!r}")
    for ratio in ratios:
        try:
            check_keep_ratio(ratio)
        except ValueError:
            raise ValueError(f"keep_ratios must be numbers in (0, 1], got {keep_ratios!r}") from None
    if any(not is_plain_int(i) or not 0 <= i < depth for i in prune_layers):
        raise ValueError(f"prune_layers must be block indices in [0, {depth - 1}], got {tuple(prune_layers)}")


def scaled_box(box, grid: int, ref_grid: int):
    """Rescale a (h1, w1, h2, w2) box from a ref_grid x ref_grid grid to grid x grid: int(c // (ref/grid)).

    ``box``: 4 ints (returns a tuple) or an int64 tensor [4] (returns one; Python's float floor division, which
    torch's ``rounding_mode="floor"`` reproduces, e.g. 14 // 1.4 == 9).
    """
    factor = ref_grid / grid
    if isinstance(box, torch.Tensor):
        return torch.div(box.double(), factor, rounding_mode="floor").long()
    # torch.sym_int is int() for Python numbers; under torch.compile it keeps a changing coordinate symbolic
    # instead of specializing the graph on its value
    return tuple(torch.sym_int(c // factor) for c in box)
