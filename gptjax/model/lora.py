"""LoRA adapters as parameter-tree operations (the adapters themselves live in model/layers.py Dense).

A LoRA network's params are the base network's plus `lora_a` / `lora_b` under every adapted Dense. Post-training
(gptjax/align/lora.py) trains the `trainable` leaves, the adapters and a reward model's scalar head, and keeps
the rest frozen; `merged` adds each adapter into its kernel (W + alpha / r * A B) for everything downstream.
"""

import ml_collections
from flax import traverse_util

ADAPTERS = ("lora_a", "lora_b")


def is_trainable(path) -> bool:
    """Whether the leaf at `path` (a tuple of keys) trains under LoRA: an adapter, or the scalar head."""
    return path[-1] in ADAPTERS or path[0] == "scalar_head"


def split(params) -> tuple[dict, dict]:
    """(trainable, frozen) parts of a params dict (or of a tree shaped like one)."""
    flat = traverse_util.flatten_dict(params)
    trainable = {p: x for p, x in flat.items() if is_trainable(p)}
    frozen = {p: x for p, x in flat.items() if not is_trainable(p)}
    return traverse_util.unflatten_dict(trainable), traverse_util.unflatten_dict(frozen)


def combine(frozen: dict, trainable: dict) -> dict:
    return traverse_util.unflatten_dict({**traverse_util.flatten_dict(frozen), **traverse_util.flatten_dict(trainable)})


def merged(model_cfg, params) -> tuple[ml_collections.ConfigDict, dict]:
    """(plain float model config, params) with every adapter added into its kernel: W + alpha / r * A B. The
    kernels must be float (an int8 base's dequantized: model/quantize.py quantization_rounded)."""
    scale = model_cfg.lora_alpha / model_cfg.lora_rank
    flat = traverse_util.flatten_dict(params)
    out = {p: x for p, x in flat.items() if p[-1] not in ADAPTERS}
    for path in [p for p in flat if p[-1] == "lora_a"]:
        layer = path[:-1]
        kernel = flat[layer + ("kernel",)]
        out[layer + ("kernel",)] = (kernel + scale * (flat[path] @ flat[layer + ("lora_b",)])).astype(kernel.dtype)
    plain = ml_collections.ConfigDict({**model_cfg.to_dict(), "lora_rank": 0, "kernel_quant": "none"})
    return plain, traverse_util.unflatten_dict(out)
