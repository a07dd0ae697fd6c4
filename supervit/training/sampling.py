"""Which 4 sub-networks one training step trains, and who teaches whom.

A step trains ``[(L, 1), (L, r1), (s, 1), (s, r2)]``: L the largest image size, s drawn uniformly among the others,
r1 and r2 drawn uniformly among the keep rates below 1. The full-keep pair takes the supervised loss; each
reduced-keep sub-network learns from a teacher (an index into the 4) by the rule of the recipe.
"""
from __future__ import annotations

import random
from typing import Iterable, Optional

from supervit.models.subnet import Subnet

# Teacher of each of the 4 sub-networks, by index into [(L, 1), (L, r1), (s, 1), (s, r2)]; None = supervised loss.
TEACHERS = {
    "group": (None, 0, None, 2),  # the paper and the DeiT recipe: each reduced keep learns from its size's full keep
    "full": (None, 0, None, 0),   # the LV-ViT reference script: both reduced keeps learn from (L, 1)
}


def teacher_rule(rule) -> tuple:
    """The 4-tuple of teacher indices of ``rule`` ('group', 'full', or a 4-tuple already)."""
    if isinstance(rule, str):
        if rule not in TEACHERS:
            raise ValueError(f"teacher rule must be one of {sorted(TEACHERS)} or a 4-tuple, got {rule!r}")
        return TEACHERS[rule]
    rule = tuple(rule)
    if len(rule) != 4 or any(t is not None and not (isinstance(t, int) and 0 <= t < i) for i, t in enumerate(rule)):
        raise ValueError(f"a teacher rule is 4 entries, each None or the index of an earlier sub-network, got {rule}")
    return rule


def sample_subnets(rng: random.Random, img_sizes, keep_ratios,
                   allowed: Optional[Iterable] = None) -> list[Optional[Subnet]]:
    """``[(L, 1), (L, r1), (s, 1), (s, r2)]`` drawn with ``rng`` (a ``random.Random``).

    Args:
        img_sizes, keep_ratios: the model's, ascending (``model.img_sizes``, ``model.keep_ratios``).
        allowed: sub-networks to draw from only (e.g. ``--subnets``); L is then its largest size, and a slot it
            cannot fill (no smaller size, or no reduced keep of that size) is None: not trained in the step.
    """
    if allowed is not None:
        return _sample_allowed(rng, allowed)
    largest, others = img_sizes[-1], list(img_sizes[:-1]) or [img_sizes[-1]]
    reduced = [r for r in keep_ratios if r < 1.0] or [1.0]
    small = rng.choice(others)
    r1, r2 = rng.choice(reduced), rng.choice(reduced)
    return [Subnet(largest, 1.0), Subnet(largest, r1), Subnet(small, 1.0), Subnet(small, r2)]


def _sample_allowed(rng: random.Random, allowed) -> list[Optional[Subnet]]:
    allowed = [Subnet(int(s), float(r)) for s, r in allowed]
    sizes = sorted({s.img_size for s in allowed})
    largest, others = sizes[-1], sizes[:-1]

    def reduced(size):
        return sorted(s.keep_ratio for s in allowed if s.img_size == size and s.keep_ratio < 1.0)

    small = rng.choice(others) if others else None
    r1 = rng.choice(reduced(largest)) if reduced(largest) else None
    r2 = rng.choice(reduced(small)) if small is not None and reduced(small) else None
    return [Subnet(largest, 1.0), Subnet(largest, r1) if r1 is not None else None,
            Subnet(small, 1.0) if small is not None else None, Subnet(small, r2) if r2 is not None else None]
