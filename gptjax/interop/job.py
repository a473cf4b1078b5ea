"""mode=hf_import and mode=hf_export: a Hugging Face checkpoint directory <-> a gptjax workdir.

Import writes a workdir like a post-training stage's (checkpoints/0 holding `params` and a meta with
stage "import"), with the checkpoint's own tokenizer and chat template beside it, so `mode=sample`, every
post-training stage (`align.init_from=W`) and evaluation read it through `load_network`. Export writes the
network of any workdir whose options map (interop/hf.py) with its tokenizer: an imported one as it came, a
gptjax one with a tokenizer_config.json carrying its reserved tokens and chat template.
"""

import os

import jax

from gptjax.align.chat import JINJA_TEMPLATE
from gptjax.data.tokenizer import Tokenizer, TokenizerError
from gptjax.interop.errors import InteropError
from gptjax.interop.hf import load_hf, read_hf_config, save_hf
from gptjax.train.checkpoint import Checkpointer
from gptjax.train.flops import param_counts
from gptjax.train.loop import json_config, run_in_mesh
from gptjax.train.network import load_network

STAGE = "import"


def hf_import(cfg, workdir: str) -> dict:
    """Reads the HF checkpoint at cfg.hf.path into `workdir`; returns a summary."""
    return run_in_mesh(_import, cfg, workdir)


def hf_export(cfg, workdir: str) -> dict:
    """Writes the newest network of `workdir` as an HF checkpoint at cfg.hf.path; returns a summary."""
    return run_in_mesh(_export, cfg, workdir)


def _import(cfg, workdir: str, mesh) -> dict:
    source, rules = os.path.abspath(cfg.hf.path), tuple(cfg.parallel.rules)
    checkpoints = os.path.join(workdir, "checkpoints")
    if os.path.isdir(checkpoints) and os.listdir(checkpoints):
        raise InteropError(f"--workdir={workdir} already holds checkpoints; import into a new workdir")
    model_type = read_hf_config(source)["model_type"]
    tokenizer_path = os.path.join(source, "tokenizer.json")
    if not os.path.isfile(tokenizer_path):
        raise InteropError(f"{tokenizer_path} does not exist; the import needs the model's tokenizer (save it with "
                           "tokenizer.save_pretrained into the same directory)")
    if not os.path.isfile(os.path.join(source, "tokenizer_config.json")):
        raise InteropError(f"{source} has no tokenizer_config.json (the tokenizer's bos / eos / pad tokens and chat "
                           "template); save it with tokenizer.save_pretrained into the same directory")
    try:
        tokenizer = Tokenizer.load(tokenizer_path)
    except TokenizerError as e:
        raise InteropError(str(e)) from e
    model_cfg, params = load_hf(source, mesh, rules, scan_layers=cfg.hf.scan_layers, param_dtype=cfg.hf.dtype)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise InteropError(f"{tokenizer_path} has {tokenizer.vocab_size} ids but the model only "
                           f"{model_cfg.vocab_size} embeddings; the tokenizer is not this model's")
    checkpointer = Checkpointer(checkpoints, max_to_keep=None)
    meta = dict(stage=STAGE, step=0, config=json_config(cfg), model=model_cfg.to_dict(),
                tokenizer_hash=tokenizer.hash, source=source, model_type=model_type)
    checkpointer.save_items(0, {"params": params}, meta)
    checkpointer.close()  # waits for the asynchronous save
    if jax.process_index() == 0:  # shared files: one writer
        tokenizer.save(os.path.join(workdir, "tokenizer.json"))
    return dict(model_type=model_type, params=param_counts(model_cfg)["total"], workdir=os.path.abspath(workdir),
                chat_template=bool(tokenizer.chat_template))


def _export(cfg, workdir: str, mesh) -> dict:
    network = load_network(workdir, mesh, tuple(cfg.parallel.rules))
    tokenizer = network.tokenizer.as_hf(JINJA_TEMPLATE)
    ids = dict(bos=tokenizer.bos_id, eos=tokenizer.eos_id, pad=tokenizer.pad_id)
    model_type = save_hf(network.model_cfg, network.params, cfg.hf.path, model_type=cfg.hf.model_type,
                         token_ids=ids)
    if jax.process_index() == 0:
        tokenizer.save(os.path.join(cfg.hf.path, "tokenizer.json"))
    return dict(model_type=model_type, step=network.step, path=os.path.abspath(cfg.hf.path))
