"""Packaging for keras_semkd.

TensorFlow ships under several distribution names with the same `tensorflow`
module (`tensorflow`, `tensorflow-cpu`, `tf-nightly`, ...). Requiring plain
`tensorflow` next to an installed `tensorflow-cpu` would make pip fetch the
~570 MB GPU wheel on top of it, so the requirement names the distribution
that is already installed and falls back to `tensorflow` on a machine with
none. Install with `pip install --no-build-isolation -e .` so that check
sees the installed packages (BUILD.md).
"""

import importlib.metadata

from setuptools import find_packages
from setuptools import setup


def _tensorflow_requirement():
    for dist in ("tensorflow-cpu", "tensorflow", "tf-nightly-cpu",
                 "tf-nightly", "tensorflow-macos"):
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return f"{dist}>=2.16"
    return "tensorflow>=2.16"


setup(
    name="keras_semkd",
    version="0.1.0",
    description=(
        "Semantic-aware knowledge distillation with parameter-free feature "
        "uniformization, and the standard KD baselines, for Keras 3."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["keras_semkd", "keras_semkd.*"]),
    python_requires=">=3.10",
    install_requires=[
        _tensorflow_requirement(),
        "keras>=3.12,<4",
        "tensorflow-datasets>=4.9",
        "importlib_resources",  # tensorflow-datasets needs it at import
        "keras-tuner>=1.4",
        "scikit-learn",  # keras-tuner's BayesianOptimization
        "tensorboard>=2.16",  # keras-tuner trials; TF 2.21 no longer pulls it
        "absl-py",
        "numpy",
        "tqdm",
        "matplotlib",
        "pillow",
    ],
    extras_require={
        # CPU JAX: runs the JAX-backend tests and the GPU code path on CPU.
        "jax": ["jax>=0.4.30"],
        # GPU machines with TensorFlow (MirroredStrategy over local GPUs).
        "gpu": ["tensorflow[and-cuda]>=2.16"],
        # GPU machines with JAX/CUDA only (this project's H100/H200 hosts).
        "jax-gpu": ["jax[cuda12]>=0.4.30"],
        "test": ["pytest>=7", "pytest-xdist>=3"],
        # Install tensorflow-serving-api with `--no-deps` (BUILD.md): its
        # dependency on `tensorflow` pulls the 570 MB GPU wheel.
        "bench": ["torch", "psutil"],
    },
)
