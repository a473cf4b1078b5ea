"""gptjax: decoder-only language models in JAX/Flax NNX."""
