"""A deliberately plain SuperViT forward, written from the forward pass described in docs/reference.md alone, to check the model against."""
import math

import torch
import torch.nn.functional as F


def naive_forward(model, x, img_size, keep_ratio):
    """Eval-mode logits and the kept index tensors per pruning block, without supervit.kernels."""
    if x.shape[-1] != img_size:
        x = F.interpolate(x, (img_size, img_size), mode="bilinear", align_corners=True)
    grid = model.patch_embed(x)
    tokens = grid.flatten(2).transpose(1, 2)
    tokens = torch.cat([model.cls_token.expand(len(x), -1, -1), tokens], 1)
    tokens = tokens + model.pos_embed_list[model.img_sizes.index(img_size)]
    kept = []
    for i, blk in enumerate(model.blocks):
        a = blk.attn
        b, n, c = tokens.shape
        qkv = blk.attn.qkv(blk.norm1(tokens)).reshape(b, n, 3, a.num_heads, c // a.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1) * a.scale).softmax(-1)
        y = a.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        tokens = tokens + y / blk.skip_lam
        if i in model.prune_layers and keep_ratio < 1:
            score = attn.mean(1)[:, 0, 1:]
            k_keep = min(math.ceil(keep_ratio * n), n - 1)
            order = torch.argsort(score, dim=1, descending=True, stable=True)[:, :k_keep]
            kept.append(order)
            patches = torch.stack([tokens[j, 1:][order[j]] for j in range(b)])
            tokens = torch.cat([tokens[:, :1], patches], 1)
        tokens = tokens + blk.mlp(blk.norm2(tokens)) / blk.skip_lam
    tokens = model.norm(tokens)
    logits = model.head(tokens[:, 0])
    if hasattr(model, "aux_head"):
        logits = logits + model.aux_weight * model.aux_head(tokens[:, 1:]).max(1).values
    return logits, kept
