"""adatape: adaptive-computation transformers (AdaTape and its baselines)."""

import setuptools

# Exact pins: the versions the code and tests were run with. jax 0.10.2
# has wheels for Python 3.11, 3.12 and 3.13.
_JAX = "0.10.2"

# The core: every model, the trainer, parity and PVR, checkpoints,
# TensorBoard event files and gs:// workdirs. No TensorFlow.
_INSTALL_REQUIRES = [
    f"jax=={_JAX}",
    f"jaxlib=={_JAX}",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    # The event-file protos (and the viewer); no TensorFlow needed.
    "tensorboard==2.21.0",
    # Workdirs on any filesystem (adatape/storage.py); gcsfs for gs://.
    "fsspec==2026.9.0",
    "gcsfs==2026.10.1",
    # Plots of sweeps, budget curves, depth maps and heatmaps.
    "matplotlib==3.11.2",
]

# The image pipelines (adatape/data/images.py, stream.py, image_ops.py):
# TensorFlow for tf.data and image ops, TFDS for the datasets. There is no
# tensorflow-cpu wheel off x86_64 (macOS arm64, Linux aarch64), where the
# `tensorflow` wheel is the CPU build.
_IMAGES = [
    'tensorflow-cpu==2.21.0; platform_machine == "x86_64"',
    'tensorflow==2.21.0; platform_machine != "x86_64"',
    "tensorflow-datasets==4.9.10",
    # The offline digits dataset (adatape/data/digits_builder.py), and the
    # module TFDS needs to locate a builder defined in a package.
    "scikit-learn==1.9.1",
    "importlib_resources==7.1.0",
]

setuptools.setup(
    name="adatape",
    version="0.1.0",
    description=(
        "AdaTape (elastic input sequences) and adaptive-computation "
        "baselines in JAX/Flax."
    ),
    license="Apache-2.0",
    packages=setuptools.find_packages(
        include=["adatape", "adatape.*", "configs", "configs.*"]
    ),
    python_requires=">=3.11,<3.14",
    install_requires=_INSTALL_REQUIRES,
    extras_require={
        "images": _IMAGES,
        # filelock: JAX locks the tests' shared compilation cache with it
        # (tests/conftest.py).
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "filelock==4.3.1"],
        # `make lint`: the formatter and linter the code follows.
        "lint": ["pyink==26.5.1", "pylint==4.1.4"],
        # Accelerators: jax's own CUDA wheels (CUDA 12: NVIDIA driver >=
        # 525; CUDA 13: driver >= 580) and libtpu.
        "gpu": [f"jax[cuda12]=={_JAX}"],
        "gpu-cuda13": [f"jax[cuda13]=={_JAX}"],
        "tpu": [f"jax[tpu]=={_JAX}"],
    },
)
