"""What kind of weight a parameter is, from its path in the params tree: the one classification that
weight decay (train/optim.py) and μP's learning-rate groups (model/mup.py) both read.

    kind        parameters                                         weight decay          μP Adam LR
    HIDDEN      kernels inside the blocks (attention, MLP)         yes                   lr / m
    EMBEDDING   token and position embeddings                      if decay_embeddings   lr
    READOUT     the untied lm_head and the scalar head kernels     if decay_embeddings   lr
    VECTOR      biases and norm scales (qk-norm's too)             never                 lr

READOUT follows EMBEDDING because a tied model's readout *is* the token embedding: an untied model must
be regularised like the tied one, not by a different rule because its readout has another name.
Decided by name, not rank: scanned layers put a leading layers axis on every block parameter.
"""

import jax

HIDDEN, EMBEDDING, READOUT, VECTOR = "hidden", "embedding", "readout", "vector"
KINDS = (HIDDEN, EMBEDDING, READOUT, VECTOR)

_EMBEDDINGS = ("token_embed", "pos_embed")
_READOUTS = ("lm_head", "scalar_head")


class UnknownParameterError(ValueError):
    """A parameter the table above does not cover: classify it here before training it."""


def path_names(path) -> list[str]:
    """The names along a `jax.tree_util` key path (dict keys, sequence indices, attributes)."""
    return [str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key)))) for key in path]


def param_kind(path) -> str:
    """HIDDEN | EMBEDDING | READOUT | VECTOR for the parameter at key path `path` of a Transformer's
    params (as `jax.tree_util.tree_map_with_path` gives it)."""
    names = path_names(path)
    if names[-1] in ("scale", "bias", "kernel_scale"):
        return VECTOR
    if names[0] == "blocks" and names[-1] in ("lora_a", "lora_b"):  # adapters: matrices of the blocks
        return HIDDEN
    if names[0] in _EMBEDDINGS and names[-1] == "embedding":
        return EMBEDDING
    if names[0] in _READOUTS and names[-1] == "kernel":
        return READOUT
    if names[0] == "blocks" and names[-1] == "kernel":
        return HIDDEN
    raise UnknownParameterError(f"parameter {'/'.join(names)} has no kind; add it to gptjax/model/param_kind.py "
                                "so weight decay and μP treat it deliberately")


def param_kinds(params):
    """The tree of `param_kind`s, shaped like `params`."""
    return jax.tree_util.tree_map_with_path(lambda path, _: param_kind(path), params)
