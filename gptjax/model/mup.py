"""The maximal update parametrization (μP), all of it in one place.

`config.model.parametrization = "mup"` makes a model of width `d_model` behave like a wider or
narrower copy of a *base* model of width `mup_base_width`, so that hyperparameters tuned on the base
model (above all the learning rate) transfer across widths (Yang et al. 2022, "Tensor Programs V:
Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer", μTransfer). With the width
multiplier m = d_model / mup_base_width, relative to "sp" (GPT-2's standard parametrization):

    parameter kind                       init std               forward multiplier   Adam LR
    input: token / position embeddings   init_std               1                    lr * e
    hidden: attn q,k,v,out, MLP kernels  init_std / sqrt(m)     1                    lr / m
    vector: biases, norm scales          zeros / ones           1                    lr * e
    readout: tied embedding, lm_head,    init_std (lm_head: 0   1 / m on the head's  lr * e
             scalar_head                 if readout_zero_init)  input
    attention logits q.k                 -                      1/sqrt(H) -> sqrt(H_base)/H

(e = `model.embed_lr_mult`, default 1, and the zero readout apply under SP too: see below.)

This is the output-multiplier form of μP in Tensor Programs V, the one that allows input and output
embeddings to be shared, as implemented by the authors' `mup` package (MuReadout / MuSharedReadout
divide the readout's input by the width multiplier; MuAdam divides the Adam LR of weights with two
width-sized dimensions by it and leaves every other LR alone). Hidden kernels' fan-in variance 1/fan_in
becomes init_std**2 / m against the base model; GPT-2's extra 1/sqrt(2 n_layers) on residual
projections is a depth rule and stays.

The tied LM head. The token embedding E is both an input weight (one-hot fan-in: constant init, Adam
LR unscaled) and, through logits = x E^T, an output weight (μP: constant init, Adam LR unscaled, the
logits multiplied by 1/m). The two rules agree on E's init and LR, so tying needs nothing beyond the
1/m logit multiplier; E's LR is the unscaled lr.

Zero readout, optional. The `mup` README recommends zero-initialising the readout (and the query
projection) so that the logits do not start as a width-dependent random function. With
`model.tie_embeddings=False`, `model.readout_zero_init=True` starts the LM head at zero (under SP and
μP alike, so μP still equals SP at the base width); by default the head keeps its random init.

Embedding/vector learning rate. Tensor Programs V tunes, at the base width, not only the global lr but
the ratio of the vector-like parameters' lr (embeddings, readout, biases, norm scales; width-independent
under μP) to the hidden lr. `model.embed_lr_mult` multiplies the former (default 1, both
parametrizations); the hidden kernels keep lr (SP) or lr / m (μP). μTransfer carries the tuned ratio to
every width. (experiments/mup_transfer measures what it and the zero readout do.)

Attention. μP's rule for the logits is 1/H rather than 1/sqrt(H), normalised to SP's at the base
model's head dim H_base: sqrt(H_base)/H. A model can grow its heads (n_heads fixed: H grows like m) or
its head count (H fixed, as in the sweep families); the scale depends on H against H_base only, not on
m, so `model.mup_base_head_dim` names H_base (0: mup_base_width / n_heads, the n_heads-fixed case).
With H == H_base the scale is SP's 1/sqrt(H) at every width.

Assumptions, documented rather than checked: every hidden width grows with d_model by the same m
(d_ff / d_model fixed). At d_model == mup_base_width (and H == H_base) every rule above is the
identity, so μP equals SP there exactly: a learning rate tuned on the SP base model is the μP learning
rate at every width.
"""

import math

from gptjax.model.layers import head_dim
from gptjax.model.param_kind import HIDDEN


def is_mup(model_cfg) -> bool:
    return model_cfg.parametrization == "mup"


def width_mult(model_cfg) -> float:
    """m = d_model / mup_base_width under μP; 1.0 under SP (every rule below is then the identity)."""
    return model_cfg.d_model / model_cfg.mup_base_width if is_mup(model_cfg) else 1.0


def hidden_init_std(model_cfg) -> float:
    """Init std of hidden kernels (attention q/k/v/out, MLP up/gate/down): variance ~ 1/fan_in, equal
    to `init_std` at the base width. Embeddings and readouts keep `init_std` at every width."""
    return model_cfg.init_std / math.sqrt(width_mult(model_cfg))


def base_head_dim(model_cfg) -> float:
    """H_base, the head dim of the μP base model: `mup_base_head_dim`, or mup_base_width / n_heads when
    that is 0 (the base model has this model's number of heads; also for configs saved before the key)."""
    return model_cfg.get("mup_base_head_dim", 0) or model_cfg.mup_base_width / model_cfg.n_heads


def attention_scale(model_cfg) -> float:
    """Multiplier of the attention logits q.k. SP: 1/sqrt(H). μP: 1/H, the μP rule, written as
    sqrt(H_base)/H so that it equals 1/sqrt(H) at the base head dim (Tensor Programs V; the `mup`
    README's 8/d is the same idea for H_base = 64)."""
    H = head_dim(model_cfg)
    if not is_mup(model_cfg):
        return H**-0.5
    return math.sqrt(base_head_dim(model_cfg)) / H


def output_multiplier(model_cfg) -> float:
    """Multiplier on the input of every readout (the tied or untied LM head, the scalar head): 1/m.
    Keeps logits O(1) once training has aligned the readout with the features, which grow the logits
    like m under SP."""
    return 1.0 / width_mult(model_cfg)


def embed_lr_mult(model_cfg) -> float:
    """`model.embed_lr_mult`: the Adam learning rate of every non-hidden parameter (embeddings, readout,
    biases, norm scales) relative to `optim.lr`, under SP and μP alike; 1 for configs saved before the key."""
    return float(model_cfg.get("embed_lr_mult", 1.0))


def adam_lr_multiplier(model_cfg, kind: str) -> float:
    """Factor on the Adam learning rate of a parameter of `kind` (model/param_kind.py): 1/m for HIDDEN
    kernels under μP (both dims grow with width: "matrix-like"), `embed_lr_mult` for every other kind
    (the "vector-like" parameters, whose μP learning rate does not depend on width)."""
    return 1.0 / width_mult(model_cfg) if kind == HIDDEN else embed_lr_mult(model_cfg)


def readout_init_std(model_cfg) -> float:
    """Init std of the untied LM head: 0 with `model.readout_zero_init` (Tensor Programs V's zero readout:
    the logits start at exactly zero at every width), else `init_std`."""
    return 0.0 if model_cfg.get("readout_zero_init", False) else model_cfg.init_std
