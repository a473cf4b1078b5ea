"""The GPT-style decoder, top to bottom in one file.

tokens -> token embedding (+ learned or sinusoidal positions) -> L x Block -> final norm -> LM head
(tied to the token embedding by default; untied, it may start at zero). Each Block is attention + MLP
with residuals, the norms before (pre-norm, default) or after (post-norm) each sublayer. RoPE, if
chosen, lives in attention. Under `parametrization="mup"` the hidden init, attention scale and readout
multiplier come from gptjax/model/mup.py (at SP they are GPT-2's: init_std, 1/sqrt(head_dim), 1); so
does the LM head's init (`readout_init_std`).

Used functionally: `graphdef, params = nnx.split(model, nnx.Param)` and
`nnx.merge(graphdef, params)(tokens)` inside pure loss functions (see gptjax/train/step.py). Decoding
is functional too: `decode(tokens, positions, caches)` takes the per-layer KV caches
(gptjax/model/kv_cache.py) and returns them updated; the model itself holds nothing but parameters.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gptjax.model.attention import Attention
from gptjax.model.layers import DTYPES, MLP, Dense, dropout, make_norm, partitioned, sinusoidal_positions
from gptjax.model.mup import hidden_init_std, output_multiplier, readout_init_std
from gptjax.parallel.mesh import as_rules, constrain

ACTIVATION_NAMES = ("batch", None, None)  # how x_BxTxD is sharded between blocks


class Block(nnx.Module):
    def __init__(self, cfg, rngs, rules: tuple = ()):
        std = hidden_init_std(cfg)  # of the hidden kernels: init_std under SP
        # GPT-2: residual projections start at std / sqrt(2L) so the residual stream's variance
        # does not grow with depth.
        resid_std = std / math.sqrt(2 * cfg.n_layers)
        self.pre_norm = cfg.norm_position == "pre"
        self.dropout_rate, self.rules = cfg.dropout, rules
        self.attn_norm = make_norm(cfg.d_model, cfg, rngs)
        self.attn = Attention(cfg, rngs, std, resid_std, rules)
        self.mlp_norm = make_norm(cfg.d_model, cfg, rngs)
        self.mlp = MLP(cfg, rngs, std, resid_std)

    def __call__(self, x_BxTxD, positions_BxT, dropout_key=None, cache=None):
        """(x_BxTxD, cache): `cache` is this layer's KV cache while decoding (returned updated), else None."""
        attn_key, mlp_key = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
        if self.pre_norm:
            y_BxTxD, cache = self.attn(self.attn_norm(x_BxTxD), positions_BxT, cache)
            x_BxTxD = x_BxTxD + dropout(y_BxTxD, self.dropout_rate, attn_key)
            x_BxTxD = x_BxTxD + dropout(self.mlp(self.mlp_norm(x_BxTxD)), self.dropout_rate, mlp_key)
        else:
            y_BxTxD, cache = self.attn(x_BxTxD, positions_BxT, cache)
            x_BxTxD = self.attn_norm(x_BxTxD + dropout(y_BxTxD, self.dropout_rate, attn_key))
            x_BxTxD = self.mlp_norm(x_BxTxD + dropout(self.mlp(x_BxTxD), self.dropout_rate, mlp_key))
        return constrain(x_BxTxD, ACTIVATION_NAMES, self.rules), cache


def _stacked_blocks(cfg, rngs, rules):
    """L blocks with parameters stacked on a leading 'layers' axis, for `nnx.scan`."""

    @nnx.split_rngs(splits=cfg.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs):
        return Block(cfg, rngs, rules)

    return make(rngs)


def _run_blocks(blocks, x_BxTxD, positions_BxT, dropout_key, caches, *, scan, remat, n_layers):
    """(x_BxTxD, caches) after the L blocks. `caches`: None in training; while decoding a list of L
    KV caches, or under `scan` one stacked on a leading layer axis, scanned over like the parameters."""
    layer_keys = None if dropout_key is None else jax.random.split(dropout_key, n_layers)

    def apply(block, x, key, cache):
        return block(x, positions_BxT, key, cache)

    if remat:  # recompute activations in the backward pass: memory for FLOPs
        apply = nnx.remat(apply)
    if scan:  # one compiled block, looped: compile time independent of depth

        @nnx.scan(in_axes=(0, nnx.Carry, 0, 0), out_axes=(nnx.Carry, 0))
        def step(block, x, key, cache):
            return apply(block, x, key, cache)

        return step(blocks, x_BxTxD, layer_keys, caches)
    new_caches = []
    for i, block in enumerate(blocks):
        x_BxTxD, cache = apply(block, x_BxTxD, _layer(layer_keys, i), _layer(caches, i))
        new_caches.append(cache)
    return x_BxTxD, None if caches is None else new_caches


def _layer(per_layer, i):
    return None if per_layer is None else per_layer[i]


class Transformer(nnx.Module):
    """Decoder-only language model. `__call__` gives next-token logits, `scalar` a per-token scalar and
    `decode` the hidden states of tokens decoded incrementally with KV caches."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, rules: tuple = ()):
        """`rules`: the logical-axis rules (cfg.parallel.rules) its activations and KV caches are sharding-
        constrained by under a mesh; () = unconstrained (XLA propagates the parameters' shardings)."""
        self.positional, self.d_model, self.dropout_rate = cfg.positional, cfg.d_model, cfg.dropout
        self.rules = as_rules(rules)
        self.scan_layers, self.remat, self.n_layers = cfg.scan_layers, cfg.remat, cfg.n_layers
        self.compute_dtype = DTYPES[cfg.compute_dtype]
        self.output_mult = output_multiplier(cfg)  # on every readout's input; 1 under SP
        param_dtype = DTYPES[cfg.param_dtype]
        embed_init = partitioned(nnx.initializers.normal(cfg.init_std), ("vocab", "embed"))
        self.token_embed = nnx.Embed(cfg.vocab_size, cfg.d_model, embedding_init=embed_init,
                                     dtype=self.compute_dtype, param_dtype=param_dtype, rngs=rngs)
        if cfg.positional == "learned":
            pos_init = partitioned(nnx.initializers.normal(cfg.init_std), ("positions", "embed"))
            self.pos_embed = nnx.Embed(cfg.max_len, cfg.d_model, embedding_init=pos_init,
                                       dtype=self.compute_dtype, param_dtype=param_dtype, rngs=rngs)
        else:
            self.pos_embed = None
        if cfg.scan_layers:
            self.blocks = _stacked_blocks(cfg, rngs, self.rules)
        else:
            self.blocks = nnx.List([Block(cfg, rngs, self.rules) for _ in range(cfg.n_layers)])
        # Post-norm blocks already end in a norm; pre-norm needs one before the head.
        self.final_norm = make_norm(cfg.d_model, cfg, rngs) if cfg.norm_position == "pre" else None
        dense = dict(use_bias=False, cfg=cfg, rngs=rngs)
        self.lm_head = None if cfg.tie_embeddings else Dense(cfg.d_model, cfg.vocab_size, ("embed", "vocab"),
                                                             std=readout_init_std(cfg), name="lm_head", **dense)
        self.scalar_head = (Dense(cfg.d_model, 1, ("embed", "scalar"), std=cfg.init_std, **dense)
                            if cfg.scalar_head else None)

    def hidden(self, tokens_BxT, positions_BxT=None, dropout_key=None):
        """Final hidden states x_BxTxD (after the final norm). `dropout_key=None` means eval mode."""
        return self._trunk(tokens_BxT, positions_BxT, dropout_key, caches=None)[0]

    def decode(self, tokens_BxT, positions_BxT, caches):
        """Incremental decoding, in eval mode: (x_BxTxD, caches) for T tokens written at the caches' next
        T slots, which also attend to the slots already cached (gptjax/model/kv_cache.py)."""
        return self._trunk(tokens_BxT, positions_BxT, None, caches)

    def _trunk(self, tokens_BxT, positions_BxT, dropout_key, caches):
        """The forward pass `hidden` and `decode` share: (x_BxTxD, caches, None without caches)."""
        B, T = tokens_BxT.shape
        if positions_BxT is None:
            positions_BxT = jnp.broadcast_to(jnp.arange(T), (B, T))
        x_BxTxD = self.token_embed(tokens_BxT)
        if self.positional == "learned":
            x_BxTxD = x_BxTxD + self.pos_embed(positions_BxT)
        elif self.positional == "sinusoidal":
            x_BxTxD = x_BxTxD + sinusoidal_positions(positions_BxT, self.d_model, self.compute_dtype)
        embed_key, blocks_key = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
        x_BxTxD = constrain(dropout(x_BxTxD, self.dropout_rate, embed_key), ACTIVATION_NAMES, self.rules)
        x_BxTxD, caches = _run_blocks(self.blocks, x_BxTxD, positions_BxT, blocks_key, caches,
                                      scan=self.scan_layers, remat=self.remat, n_layers=self.n_layers)
        return (self.final_norm(x_BxTxD) if self.final_norm is not None else x_BxTxD), caches

    def logits(self, x_BxTxD):
        """LM head on hidden states: float32 logits whatever the compute dtype. The matmul accumulates in
        float32 (`preferred_element_type`), so sampling, log-probs, DPO margins and beam scores carry no bf16
        rounding of the logits (a bf16 result would round them to ~3 significant digits). It runs on a 2-D
        view (fast on XLA:CPU)."""
        B, T, D = x_BxTxD.shape
        x_RxD = self.readout_input(x_BxTxD).reshape(B * T, D)
        return jnp.dot(x_RxD, self.readout_DxV(), preferred_element_type=jnp.float32).reshape(B, T, -1)

    def readout_input(self, x_BxTxD):
        """What the LM head multiplies: the hidden states times μP's output multiplier, in the compute dtype."""
        return (x_BxTxD * self.output_mult).astype(self.compute_dtype)

    def readout_DxV(self):
        """The LM head's matrix in the compute dtype: the token embedding's transpose when tied (the
        training loss applies it to `readout_input` through model/fused_cross_entropy.py)."""
        if self.lm_head is not None:
            return self.lm_head.dequantized_kernel()
        return self.token_embed.embedding[...].astype(self.compute_dtype).T

    def __call__(self, tokens_BxT, positions_BxT=None, dropout_key=None):
        """Next-token logits_BxTxV (float32)."""
        return self.logits(self.hidden(tokens_BxT, positions_BxT, dropout_key))

    def scalar(self, tokens_BxT, positions_BxT=None):
        """One scalar per position from the shared trunk (reward / value models): values_BxT."""
        if self.scalar_head is None:
            raise ValueError("this model has no scalar head; build it with model.scalar_head=True")
        return self.scalar_head(self.hidden(tokens_BxT, positions_BxT) * self.output_mult)[..., 0]
