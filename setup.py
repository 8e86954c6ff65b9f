"""adatape: adaptive-computation transformers (AdaTape and its baselines)."""

import setuptools

# Exact pins: jax 0.10.2 is the newest jax for Python 3.11, and the rest are
# the versions the code and tests were run with on it.
_INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "ml-collections==1.1.0",
    "clu==0.0.12",
    # clu.metric_writers imports both tensorflow and tensorboard.
    "tensorflow-cpu==2.21.0",
    "tensorboard==2.21.0",
    "tensorflow-datasets==4.9.10",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    # Plots of sweeps and budget curves.
    "matplotlib==3.11.2",
    # The offline digits dataset (adatape/data/digits_builder.py), and the
    # module TFDS needs to locate a builder defined in a package.
    "scikit-learn==1.9.1",
    "importlib_resources==7.1.0",
]

setuptools.setup(
    name="adatape",
    version="0.1.0",
    description="AdaTape (elastic input sequences) and adaptive-computation "
    "baselines in JAX/Flax.",
    packages=setuptools.find_packages(
        include=["adatape", "adatape.*", "configs", "configs.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=_INSTALL_REQUIRES,
    extras_require={
        "test": ["pytest==9.2.0", "pytest-xdist==3.8.0"],
        # `make lint`: the formatter and linter the code follows.
        "lint": ["pyink==26.5.1", "pylint==4.1.4"],
        "tpu": ["jax[tpu]==0.10.2"],
    },
)
