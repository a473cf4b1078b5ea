"""Hugging Face checkpoint directories <-> gptjax params: `load_hf(dir)` and `save_hf(cfg, params, dir)`.

One path for every family: config.json names the model_type, whose module (hf_gpt2.py, hf_llama.py) maps
the config and the tensor names; this module reads the tensors (safetensors_io.py: memory-mapped, bf16
included, one file or a sharded index), checks every name and shape against the gptjax model the config
describes, and places each tensor straight onto its mesh sharding, one tensor at a time: each process
hands its devices only their slices (no full copy of the model on one device). Neither direction needs
torch or transformers, and nothing is downloaded.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, traverse_util

from gptjax.atomic import atomic_path
from gptjax.config.interop import EXPORT_MODEL_TYPES
from gptjax.interop import hf_gpt2, hf_llama
from gptjax.interop.errors import InteropError
from gptjax.interop.safetensors_io import (SHARD_BYTES, SafetensorsError, TensorFiles, holds_checkpoint,
                                          write_tensors)
from gptjax.model.build import abstract_model
from gptjax.model.layers import DTYPES
from gptjax.parallel.mesh import to_device, to_host
from gptjax.train.state import abstract_params

CONFIG_FILE = "config.json"
MODEL_TYPES = ("gpt2", *hf_llama.MODEL_TYPES)


def read_hf_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise InteropError(f"{path} does not exist; point hf.path at a directory written by save_pretrained "
                           "(config.json, *.safetensors, tokenizer.json)")
    try:
        with open(path) as f:
            hf = json.load(f)
    except ValueError as e:
        raise InteropError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise InteropError(f"{path} is not a JSON object; point hf.path at a directory written by save_pretrained")
    if hf.get("model_type") not in MODEL_TYPES:
        raise InteropError(f"{path}: model_type={hf.get('model_type')!r} cannot be imported; supported: "
                           f"{', '.join(MODEL_TYPES)}")
    return hf


def import_model_config(hf: dict, directory: str):
    """The gptjax model config of the HF config `hf` read from `directory` (InteropError if none)."""
    where = os.path.join(directory, CONFIG_FILE)
    family = hf_gpt2 if hf["model_type"] == "gpt2" else hf_llama
    try:
        return family.model_config(hf, where)
    except KeyError as e:
        raise InteropError(f"{where} lacks the key {e.args[0]!r} a {hf['model_type']} config needs") from e


def _unstacked_shapes(model_cfg) -> dict:
    """{param path: shape} of the model with one subtree per block (scan_layers off)."""
    cfg = model_cfg.copy_and_resolve_references()
    cfg.scan_layers = False
    flat = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(abstract_model(cfg), nnx.Param)))
    return {path: tuple(x.shape) for path, x in flat.items()}


def _read_tensors(files: TensorFiles, model_cfg, model_type: str, directory: str) -> dict:
    """{param path: host array (memory-mapped where possible)} of the unstacked model, every name and shape
    checked."""
    expected = _unstacked_shapes(model_cfg)
    used = set()

    def take(name):
        if name not in files.names:
            raise InteropError(f"{directory}: the checkpoint lacks the tensor {name!r} that the {model_type} of its "
                               "config.json needs; the weights do not match the config")
        used.add(name)
        return files.get(name)

    if model_type == "gpt2":
        def gpt2_take(name):  # stored with the "transformer." prefix or, in older checkpoints, without
            prefixed = hf_gpt2.PREFIX + name
            return take(prefixed if prefixed in files.names else name)

        flat = traverse_util.flatten_dict(hf_gpt2.params_from_tensors(gpt2_take, model_cfg))
        ignored = hf_gpt2.IGNORED_SUFFIXES
    else:
        flat = {path: take(name).T if transposed else take(name)
                for path, (name, transposed) in hf_llama.tensor_names(expected).items()}
        ignored = hf_llama.IGNORED_SUFFIXES
    if model_cfg.tie_embeddings:
        used.add("lm_head.weight")  # some checkpoints store the tied copy too
    unexpected = sorted(n for n in files.names - used if not n.endswith(ignored))
    if unexpected:
        raise InteropError(f"{directory}: tensors the model of its config.json does not use ({unexpected[:4]}); "
                           "the config does not describe these weights")
    for path, array in flat.items():
        if tuple(array.shape) != expected[path]:
            raise InteropError(f"{directory}: tensor for {'/'.join(map(str, path))} has shape {tuple(array.shape)}, "
                               f"the config describes {expected[path]}; fix config.json to match the weights")
    return flat


def _place(flat: dict, model_cfg, mesh, rules) -> dict:
    """The nested params, each leaf converted to model.param_dtype and put onto its sharding (mesh None:
    the default device), one leaf at a time; blocks stacked on a leading L axis under scan_layers."""
    dtype = DTYPES[model_cfg.param_dtype]
    if model_cfg.scan_layers:
        stacked = {}
        for path, array in flat.items():
            if path[0] == "blocks":
                stacked.setdefault(("blocks", *path[2:]), [None] * model_cfg.n_layers)[path[1]] = array
            else:
                stacked[path] = array
        flat = {p: np.stack(v) if isinstance(v, list) else v for p, v in stacked.items()}
    if mesh is None:
        return traverse_util.unflatten_dict({p: jnp.asarray(np.asarray(a, dtype)) for p, a in flat.items()})
    targets = traverse_util.flatten_dict(abstract_params(model_cfg, mesh, rules))
    for path, target in targets.items():
        try:
            target.sharding.shard_shape(target.shape)
        except ValueError as e:  # a dim that the mesh axes it is sharded over do not divide
            sizes = ", ".join(f"{k}={model_cfg[k]}" for k in ("vocab_size", "d_model", "d_ff", "n_heads", "n_kv_heads"))
            raise InteropError(f"the model ({sizes}) does not divide onto the mesh {dict(mesh.shape)}: "
                               f"{'/'.join(map(str, path))} of shape {target.shape} is split "
                               f"{target.sharding.spec}; choose parallel.mesh axes that divide these sizes") from e
    return traverse_util.unflatten_dict({p: to_device(np.asarray(a, dtype), targets[p].sharding)
                                         for p, a in flat.items()})


def load_hf(directory: str, mesh=None, rules=(), *, scan_layers: bool = False, param_dtype: str = "float32"):
    """Reads a transformers checkpoint directory: `(model_cfg, params)`, `model_cfg` a gptjax `config.model`
    and `params` the pure nested dict `nnx.merge` takes, placed by `rules` on `mesh` (None: default device)
    in `param_dtype`. Dropout is 0 (inference); set `model.dropout` to fine-tune."""
    directory = str(directory)
    hf = read_hf_config(directory)
    model_cfg = import_model_config(hf, directory)
    model_cfg.update(scan_layers=scan_layers, param_dtype=param_dtype)
    try:
        files = TensorFiles(directory)
    except SafetensorsError as e:
        raise InteropError(str(e)) from e
    flat = _read_tensors(files, model_cfg, hf["model_type"], directory)
    return model_cfg, _place(flat, model_cfg, mesh, rules)


def export_model_type(model_cfg, requested: str = "auto") -> str:
    """The HF model_type `model_cfg` exports as (InteropError for one no family can hold)."""
    if requested not in EXPORT_MODEL_TYPES:
        raise InteropError(f"hf.model_type={requested!r}: must be one of {', '.join(EXPORT_MODEL_TYPES)}")
    gpt2_like = model_cfg.positional == "learned"
    if requested == "gpt2" or (requested == "auto" and gpt2_like):
        hf_gpt2.check_exportable(model_cfg)
        return "gpt2"
    hf_llama.check_exportable(model_cfg)
    return hf_llama.export_model_type(model_cfg, requested)


def save_hf(model_cfg, params, directory: str, *, model_type: str = "auto", token_ids: dict | None = None,
            shard_bytes: int = SHARD_BYTES) -> str:
    """Writes `params` of `model_cfg` as a transformers checkpoint (config.json + safetensors, in the params'
    dtype) that `AutoModelForCausalLM.from_pretrained(directory)` loads; returns the model_type written.
    `token_ids`: {"bos", "eos", "pad"} ids for config.json; files above `shard_bytes` are split into shards with
    an index. Every process calls it (gathering sharded params is collective); process 0 writes."""
    model_type = export_model_type(model_cfg, model_type)
    if holds_checkpoint(str(directory)):
        raise InteropError(f"{directory} already holds safetensors weights; export into an empty directory (old shards "
                           "left beside new ones would be read instead of them)")
    host = traverse_util.flatten_dict(to_host(params))
    if model_cfg.scan_layers:  # one subtree per block, as the HF names have
        flat = {}
        for path, array in host.items():
            if path[0] == "blocks":
                flat.update({("blocks", i, *path[1:]): array[i] for i in range(model_cfg.n_layers)})
            else:
                flat[path] = array
        host = flat
    if model_type == "gpt2":
        tensors = hf_gpt2.tensors_from_params(model_cfg, traverse_util.unflatten_dict(host))
        config = hf_gpt2.hf_config(model_cfg, token_ids or {})
    else:
        tensors = {name: host[path].T if transposed else host[path]
                   for path, (name, transposed) in hf_llama.tensor_names(host).items()}
        config = hf_llama.hf_config(model_cfg, model_type, token_ids or {})
    if jax.process_index() == 0:
        os.makedirs(directory, exist_ok=True)
        write_tensors(directory, tensors, shard_bytes)
        with atomic_path(os.path.join(directory, CONFIG_FILE)) as tmp, open(tmp, "w") as f:
            json.dump(config, f, indent=2)
    return model_type
