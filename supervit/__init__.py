"""SuperViT: one vision transformer, 12 operating points (4 token grids x 3 keep rates), fused pruning ops.

``import supervit`` registers ``super_deit_s`` and ``super_lvvit_s`` with timm.
"""
from . import kernels, models

__version__ = "0.1.0"
__all__ = ["kernels", "models"]
