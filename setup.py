"""Build script of the pdnet package.

The ``pdnet`` package, plus the Triton kernels in ``kernels/`` (when present),
installed as the subpackage ``pdnet.kernels``.

Install into an environment that already has torch, without build isolation:

    pip install --no-build-isolation -e .
"""
from __future__ import annotations

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent.resolve()


packages = find_packages(include=["pdnet", "pdnet.*"])
package_dir = {"": "."}
if (ROOT / "kernels" / "__init__.py").is_file():
    packages.append("pdnet.kernels")
    package_dir["pdnet.kernels"] = "kernels"

setup(
    name="pdnet",
    version="0.1.0",
    description="PDNet (Part-Decoupling Network) for video portrait segmentation, with fused kernels",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir=package_dir,
    package_data={"pdnet": ["assets/*.png", "assets/*.md", "configs/*.yaml"]},
    install_requires=[
        "torch>=2.11",
        "torchvision>=0.26",
        "numpy",
        "pillow",
        "tqdm",
        "pyyaml",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout"],
        "data": ["scikit-image", "av"],
    },
    entry_points={"console_scripts": ["pdnet = pdnet.cli:main"]},
    zip_safe=False,
)
