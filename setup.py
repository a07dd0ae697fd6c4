"""Installs the ``supervit`` package (the compiled extension ``supervit._C`` is added by csrc/ support)."""
from setuptools import find_packages, setup

setup(
    name="supervit",
    version="0.1.0",
    description="Super Vision Transformer: one ViT, 12 operating points, fused token-pruning kernels",
    packages=find_packages(include=["supervit", "supervit.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "timm>=1.0", "tqdm"],
)
