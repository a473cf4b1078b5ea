"""The config schema: defaults for every key, and `validate(cfg)`.

Job files in `configs/` start from `default_config()` and override what they need, so every job has
every key and `--config.a.b=v` overrides are checked by ml_collections against this schema.
`validate` runs before anything is built or compiled; each rule raises `ConfigError` with one
sentence naming the key, the bad value and the rule.
"""

import importlib.util
import math
import os

import ml_collections

from gptjax.data.sources import DataSourceError, parse_source
from gptjax.data.tokenizer import NUM_SPECIAL_TOKENS

MODES = ("pretrain", "eval", "sweep", "sample", "sft", "reward", "ppo", "grpo", "rloo", "dpo", "label")
ALIGN_MODES = ("sft", "reward", "ppo", "grpo", "rloo", "dpo", "label")  # gptjax/align/
RL_MODES = ("ppo", "grpo", "rloo")
KL_ESTIMATORS = ("k1", "k2", "k3")  # align/losses.py kl_penalty
LOSS_AGGREGATIONS = ("token_mean", "seq_mean", "max_len")  # align/losses.py aggregate
GRPO_ADVANTAGES = ("grpo", "dr_grpo")  # align/losses.py group_advantages (mode=rloo adds "rloo")
DPO_LOSSES = ("sigmoid", "ipo")  # align/losses.py dpo_loss
JUDGES = ("gold", "reward_model", "self")
PARAMETRIZATIONS = ("sp", "mup")
SWEEP_MODES = ("run", "plan", "fit")
SWEEP_FAMILIES = ("depth", "explicit")
POSITIONAL = ("learned", "sinusoidal", "rope")
NORMS = ("layernorm", "rmsnorm")
NORM_POSITIONS = ("pre", "post")
ACTIVATIONS = ("gelu", "relu", "swiglu")
DTYPES = ("float32", "bfloat16")
ATTENTION_KERNELS = ("auto", "blocked", "einsum", "xla", "cudnn")  # model/attention.py choose_attention_kernel
SCHEDULES = ("warmup_cosine", "wsd", "constant")
MESH_AXES = ("data", "fsdp", "tensor")

MAX_MARKOV_TABLE = 2**26  # float64 entries of a synthetic chain's transition table (512 MiB)

# MaxText-style logical-axis rules: parameter/activation axis name -> mesh axes (or None = replicated).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
    ("positions", None),
    ("head_dim", None),
    ("scalar", None),
)


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and the fix."""


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config a job file gives, as `--config=PATH[:ARG]` would: `load_config("configs/sft.py:shakespeare")`
    calls that file's `get_config("shakespeare")`. For notebooks and scripts; the CLI parses its own flag."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist; pass a configs/*.py path (relative to {os.getcwd()})")
    module_spec = importlib.util.spec_from_file_location(f"gptjax_config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} has no get_config(); a job file defines get_config() -> ConfigDict")
    return module.get_config(arg) if arg else module.get_config()


def default_config() -> ml_collections.ConfigDict:
    """Every key gptjax reads, with defaults for a tiny CPU run."""
    cfg = ml_collections.ConfigDict()
    cfg.mode = "pretrain"
    cfg.seed = 0

    cfg.model = ml_collections.ConfigDict(
        dict(
            vocab_size=64,
            max_len=128,
            d_model=64,
            n_layers=2,
            n_heads=4,
            n_kv_heads=4,  # < n_heads gives grouped-query attention
            d_ff=256,
            positional="learned",
            norm="layernorm",
            norm_position="pre",
            activation="gelu",
            qk_norm=False,
            use_bias=True,
            tie_embeddings=True,
            dropout=0.0,
            param_dtype="float32",
            compute_dtype="float32",
            # causal attention kernel: "auto" = einsum on CPU, cuDNN on GPU where it applies, else XLA
            attention="auto",
            remat=False,
            scan_layers=False,
            scalar_head=False,
            init_std=0.02,
            rope_base=10000.0,
            parametrization="sp",  # "sp" (standard) or "mup" (maximal update parametrization, model/mup.py)
            mup_base_width=64,  # muP: the d_model whose init and learning rates the others transfer from
            # muP: the base model's head dim, for its attention scale; 0 = mup_base_width / n_heads (n_heads
            # fixed across widths). Sweeps, whose family fixes sweep.head_dim and grows n_heads, set it.
            mup_base_head_dim=0,
            # Adam lr of embeddings, readout, biases and norm scales relative to optim.lr (the hidden kernels'
            # at the base width), under sp and mup alike: Tensor Programs V tunes this ratio at the base width.
            embed_lr_mult=1.0,
            readout_zero_init=False,  # start the untied LM head at zero (needs tie_embeddings=False)
        )
    )
    cfg.data = ml_collections.ConfigDict(
        dict(
            source="synthetic:markov",  # or shakespeare, text:<glob>, tfds:<name>[/<config>]:<split>
            tokenizer="",  # path to a tokenizer.json; "" = train BPE on the train split (model.vocab_size ids)
            # The tokenizer is trained on a sample of this many bytes of train text, spread over the corpus
            # (all of it when smaller): BPE training memory grows with its input, and C4 is 800 GB.
            tokenizer_sample_bytes=100_000_000,
            cache_dir="",  # token cache; "" = $XDG_CACHE_HOME/gptjax/tokens (~/.cache/gptjax/tokens)
            val_fraction=0.05,  # documents held out for validation
            # Seeds the train/validation split (text: which documents are held out; synthetic:markov: the
            # chain and its validation batches), apart from `seed` (init and shuffle order), so the seeds of a
            # sweep (sweep.seeds) are trained on one corpus and evaluated on one validation set.
            split_seed=0,
            keep_markup=True,  # shakespeare: keep the Markdown headings / speaker marks
            text_split="file",  # text:<glob>: one document per "file" or per blank-line "paragraph"
            tfds_text_key="text",
            tfds_data_dir="",  # "" = TFDS's default data directory
            seq_len=64,
            batch_size=16,  # global batch, in sequences
            markov_order=1,  # synthetic:markov only
            markov_alphabet=0,  # symbols used; 0 = model.vocab_size - 7 (as many as a BPE vocab's ordinary ids)
            markov_concentration=0.1,  # Dirichlet alpha of each transition row; lower = lower entropy
            eval_batches=4,
        )
    )
    cfg.optim = ml_collections.ConfigDict(
        dict(
            lr=3e-3,
            schedule="warmup_cosine",
            warmup_steps=20,
            min_lr_ratio=0.1,  # final LR of cosine/WSD as a fraction of lr
            wsd_decay_fraction=0.2,  # WSD: last fraction of steps decays linearly
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            weight_decay=0.1,
            decay_embeddings=False,
            clip_norm=1.0,  # 0 disables clipping
            grad_accum=1,  # microbatches per step; batch_size must divide by it
        )
    )
    cfg.train = ml_collections.ConfigDict(
        dict(
            steps=200,
            eval_every=50,
            log_every=10,
            checkpoint_every=100,
            max_to_keep=3,
            cpu_peak_flops=0.0,  # 0 = measure once with a matmul calibration
            progress_bar=True,  # tqdm when stderr is a terminal
            show_steps=True,  # False: no bar and no per-interval lines (sweep workers: their parent reports)
            # Resuming a checkpoint written for another train.steps moves the LR schedule's horizon
            # (warmup/cosine/WSD are laid out over train.steps), so it is refused unless this is True;
            # then it resumes with a warning. Other optim changes are always refused on resume.
            allow_steps_change=False,
        )
    )
    cfg.parallel = ml_collections.ConfigDict(
        dict(
            mesh=(-1, 1, 1),  # (data, fsdp, tensor); one -1 takes the rest of the devices
            num_devices=-1,  # -1 = all visible devices
            rules=DEFAULT_RULES,
            multi_host=False,  # call jax.distributed.initialize() first
        )
    )
    cfg.sweep = ml_collections.ConfigDict(
        dict(
            mode="run",  # run: plan, train unfinished trials, fit, report; plan: write plan.json only; fit: refit
            budgets=(),  # training FLOPs per model (flops.py's with_attention accounting), one IsoFLOP profile each
            family="depth",  # depth: d_model = width_per_layer * n_layers; explicit: the (n_layers, d_model) in models
            depths=(1, 2, 3, 4, 5, 6, 8, 10, 12),  # depth family: the candidate depths
            width_per_layer=64,
            head_dim=16,
            ffn_ratio=4,
            models=(),  # explicit family: ((n_layers, d_model), ...)
            sizes_per_budget=4,  # models per IsoFLOP profile, spread around the expected optimum
            size_spread=16.0,  # ratio of largest to smallest model (params) in a profile
            tokens_per_param=20.0,  # the prior optimum (Chinchilla) the profile is centred on
            learning_rates=(),  # () = optim.lr; several = a per-scale learning-rate sweep
            batch_sizes=(),  # () = data.batch_size; several = a batch-size sweep
            # With batch_sizes=(): each budget's batch is the largest power of two <= data.batch_size that
            # gives every model of its profile >= min_steps steps (small budgets get small batches).
            batch_per_budget=False,
            seeds=(0,),
            # Measured seed noise: after the lr search, each profile's noise_models best models are trained
            # again at their best lr with each of these seeds (their losses averaged; the spread is the noise).
            noise_seeds=(),
            noise_models=3,
            # A model whose best lr is at an edge of the lrs it was trained at gets one more beyond that edge
            # (the grid's own ratio), in up to lr_widenings rounds, so every optimum ends inside its grid.
            lr_widenings=2,
            eval_windows=0,  # > 0: every trial evaluates these same validation windows (any batch size)
            warmup_fraction=0.05,  # of each trial's steps
            min_steps=20,  # a trial shorter than this cannot be trained meaningfully: its budget is refused
            max_epochs=4.0,  # warn when a trial reads the training text more often than this
            vectorize=True,  # train trials that share shapes (lr, seed) together under jax.vmap
            # 0 = trials in this process; N = N parallel subprocesses on a CPU backend (on an accelerator trials
            # always run in this process: each subprocess would claim most of the device's memory).
            n_workers=0,
            trial_index=-1,  # >= 0: run only trial K of plan.json (cluster array jobs), then stop
            # After fitting, train the recommended N*, D* at this budget (and sizes 2x smaller and larger) and
            # compare with the predicted loss. -1 = 10^0.5 x the largest budget; 0 = no validation.
            validate_flops=-1.0,
            target_flops=-1.0,  # the recommendation's budget; -1 = validate_flops (else 30x the largest budget)
            n_bootstrap=200,
            # JAX's persistent compilation cache for every trial ("" = off): a rerun, a resumed sweep or a second
            # seed compiles nothing it compiled before. XDG_CACHE_HOME is honoured.
            compilation_cache="~/.cache/gptjax/jax",
        )
    )
    cfg.sample = ml_collections.ConfigDict(
        dict(
            prompt="",  # mode=sample: one prompt, or
            prompts_file="",  # a UTF-8 file with one prompt per line (blank lines skipped)
            output="",  # JSONL of the samples; "" = WORKDIR/samples.jsonl
            num_samples=1,  # completions per prompt (with beam search: the best num_samples beams)
            max_new_tokens=64,
            temperature=1.0,  # 0 = greedy
            top_k=0,  # 0 = off
            top_p=1.0,  # 1 = off
            min_p=0.0,  # 0 = off
            stop_strings=(),  # besides <|eos|>, which always stops
            seed=0,
            batch_size=16,  # rows (prompts x num_samples) decoded together
            beam_width=0,  # > 0: beam search (deterministic) instead of sampling
            length_penalty=1.0,  # beam score = sum(logprobs) / length**length_penalty
            regex="",  # constrained decoding: completions match this regular expression, or
            json_schema="",  # are JSON documents valid under this JSON schema (a JSON string)
            scorer="",  # best-of-N: a reward-model workdir (mode=reward) that ranks num_samples completions
            chat=False,  # wrap each prompt in the chat template (a user turn + <|assistant|>), for SFT'd models
        )
    )
    # Post-training (gptjax/align/): every mode reads `align`; ppo/grpo/rloo read `rl`, dpo reads `dpo`.
    # The network is the one in the init_from checkpoint (config.model is used only when init_from is "").
    cfg.align = ml_collections.ConfigDict(
        dict(
            init_from="",  # workdir whose latest checkpoint starts the model; "" = fresh from config.model
            task="arithmetic",  # embedded task (align/tasks.py) used when align.data is "": arithmetic | shakespeare
            data="",  # JSONL; sft: {"messages"}; reward/dpo: pairs or rankings (README, Post-training); "" = align.task
            num_examples=400,  # rows an embedded task generates (arithmetic has 400 distinct problems)
            val_fraction=0.05,  # held out for eval (reward accuracy, DPO margins, SFT loss)
            # Seeds which prompts are held out (align/data.py split_train_val): the split is by prompt, so
            # every stage and every `seed` of a pipeline keep the same held-out prompts.
            split_seed=0,
            batch_size=16,  # sft/reward/dpo: rows per step; rl: prompts per step
            reward_model="",  # ppo/grpo/rloo/label: a mode=reward workdir; "" = the task's programmatic reward
            reference="",  # ppo/grpo/rloo/dpo: frozen reference workdir; "" = align.init_from
            normalize_reward=True,  # reward: shift the score so its mean on the SFT (chosen) responses is 0
            output="",  # label: the preference JSONL written; "" = WORKDIR/preferences.jsonl
            judge="gold",  # label: gold (the task's programmatic reward) | reward_model | self (constitution prompt)
            constitution="Is the reply kind and varied? Answer yes or no.",  # label, judge=self: the question asked
            samples_per_prompt=2,  # label: completions sampled per prompt and compared
        )
    )
    cfg.rl = ml_collections.ConfigDict(
        dict(
            group_size=4,  # completions sampled per prompt (grpo/rloo groups; ppo samples this many too)
            max_new_tokens=8,
            temperature=1.0,
            top_p=1.0,
            kl_coef=0.05,  # beta of the KL(policy || reference) penalty
            track_kl=True,  # with kl_coef 0, still hold the reference to log KL; False skips loading it (no KL metrics)
            kl_estimator="k1",  # k1 | k2 | k3 (Schulman, "Approximating KL")
            kl_in_reward=True,  # True: -beta*KL per token in the reward; False: beta*KL as a loss term
            adaptive_kl=False,  # ppo: Ziegler's controller moves kl_coef toward kl_target
            kl_target=6.0,  # nats per sequence
            kl_horizon=10000,
            gamma=1.0,
            lam=0.95,
            whiten_advantages=True,
            clip=0.2,  # policy ratio clip
            value_clip=0.2,  # ppo value clip (0 = off)
            vf_coef=0.1,
            entropy_coef=0.0,
            epochs=2,  # optimisation passes over each rollout batch
            minibatches=2,  # per pass
            ptx_coef=0.0,  # ppo: weight of a pretraining LM loss on the SFT data mixed in (InstructGPT's ptx)
            value_model="separate",  # ppo: separate (own trunk, from the reward model or init) | shared (policy trunk)
            advantage="grpo",  # grpo: grpo (mean/std) | dr_grpo (no std, loss summed / (B*L_max))
            loss_aggregation="token_mean",  # token_mean | seq_mean | max_len (dr_grpo forces max_len)
            missing_eos_penalty=1.0,  # subtracted from the score of a completion that never emitted <|eos|>
        )
    )
    cfg.dpo = ml_collections.ConfigDict(
        dict(
            beta=0.1,
            loss="sigmoid",  # sigmoid (DPO) | ipo
            label_smoothing=0.0,  # conservative DPO: the share of preferences assumed flipped
        )
    )
    return cfg


def _fail(key, value, rule):
    raise ConfigError(f"{key}={value!r}: {rule}")


def _check_choice(cfg, key, choices):
    value = cfg
    for part in key.split("."):
        value = value[part]
    if value not in choices:
        _fail(key, value, f"must be one of {', '.join(choices)}")


def mesh_batch_shards(mesh, num_devices: int) -> int:
    """data * fsdp: how many ways the batch dimension is split."""
    shape = resolve_mesh_shape(mesh, num_devices)
    return shape[0] * shape[1]


def _rule_axes(rules, logical: str) -> tuple[str, ...]:
    """The mesh axes that `rules` maps the logical axis `logical` to (() when replicated)."""
    axes = dict(rules).get(logical)
    return (axes,) if isinstance(axes, str) else tuple(axes or ())


def resolve_mesh_shape(mesh, num_devices: int) -> tuple[int, ...]:
    """Replaces the one -1 in `mesh` by what makes the product equal `num_devices`."""
    mesh = tuple(int(m) for m in mesh)
    if len(mesh) != len(MESH_AXES):
        _fail("parallel.mesh", mesh, f"must have {len(MESH_AXES)} sizes for axes {MESH_AXES}")
    if mesh.count(-1) > 1:
        _fail("parallel.mesh", mesh, "at most one size may be -1")
    if any(m == 0 or m < -1 for m in mesh):
        _fail("parallel.mesh", mesh, "sizes must be positive, or -1 for 'the rest'")
    known = math.prod(m for m in mesh if m != -1)
    if -1 in mesh:
        if num_devices % known:
            _fail("parallel.mesh", mesh, f"the fixed sizes must divide the device count {num_devices}")
        mesh = tuple(num_devices // known if m == -1 else m for m in mesh)
    if math.prod(mesh) != num_devices:
        _fail("parallel.mesh", mesh, f"product {math.prod(mesh)} must equal the device count {num_devices}")
    return mesh


def _validate_sweep(s) -> None:
    """The sweep keys that need no plan to check (gptjax/scaling/plan.py checks budgets and models)."""
    if s.mode not in SWEEP_MODES:
        _fail("sweep.mode", s.mode, f"must be one of {', '.join(SWEEP_MODES)}")
    if s.family not in SWEEP_FAMILIES:
        _fail("sweep.family", s.family, f"must be one of {', '.join(SWEEP_FAMILIES)}")
    for key in ("sizes_per_budget", "min_steps", "width_per_layer", "head_dim", "ffn_ratio"):
        if s[key] < 1:
            _fail(f"sweep.{key}", s[key], "must be >= 1")
    if s.n_workers < 0:
        _fail("sweep.n_workers", s.n_workers, "must be 0 (in this process) or the number of subprocesses")
    if s.trial_index < -1:
        _fail("sweep.trial_index", s.trial_index, "must be -1 (all trials) or a trial's index in plan.json")
    if not 0 <= s.warmup_fraction < 1:
        _fail("sweep.warmup_fraction", s.warmup_fraction, "must be in [0, 1)")
    for key in ("target_flops", "validate_flops"):
        if not (s[key] > 0 or s[key] == -1 or (key == "validate_flops" and s[key] == 0)):
            _fail(f"sweep.{key}", s[key], "must be > 0 FLOPs or -1 (automatic)" + (" or 0 (off)" if key[0] == "v" else ""))
    if s.n_bootstrap < 0:
        _fail("sweep.n_bootstrap", s.n_bootstrap, "must be >= 0")
    for key in ("lr_widenings", "eval_windows", "noise_models"):
        if s[key] < 0:
            _fail(f"sweep.{key}", s[key], "must be >= 0")


def validate(cfg: ml_collections.ConfigDict, workdir: str | None = None, device_count: int | None = None,
             process_count: int | None = None):
    """Raises ConfigError on the first rule `cfg` breaks. Returns the resolved mesh shape."""
    _check_choice(cfg, "mode", MODES)
    _validate_model(cfg)
    _validate_data(cfg)
    _validate_train(cfg.train)
    _validate_optim(cfg)
    _validate_sample(cfg)
    mesh = _validate_parallel(cfg, device_count, process_count)
    if cfg.mode in ("pretrain", "eval"):
        # Only here is cfg.model the network that runs (sampling and post-training read theirs from a
        # checkpoint; a sweep validates each trial's model as a pretraining run).
        _validate_heads_fit_mesh(cfg.model, cfg.parallel, mesh)
    if cfg.mode == "sweep":
        _validate_sweep(cfg.sweep)
    if cfg.mode in ALIGN_MODES:
        _validate_align(cfg, mesh[0] * mesh[1])
    if workdir is not None:
        _validate_workdir(workdir)
    return mesh


def _validate_workdir(workdir: str) -> None:
    """The workdir and its missing parents are created by the run (os.makedirs); refuse only what cannot be:
    a path through a file, or under a directory this user cannot write."""
    path = os.path.abspath(workdir)
    if os.path.exists(path) and not os.path.isdir(path):
        _fail("--workdir", workdir, "is a file; give a directory (it is created if missing)")
    ancestor = path
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        _fail("--workdir", workdir, f"{ancestor} is a file, so the directory cannot be created under it; "
              "choose another path")
    if ancestor != path and not os.access(ancestor, os.W_OK | os.X_OK):
        _fail("--workdir", workdir, f"cannot create it: {ancestor} is not writable; choose a path you can write")


def create_workdir(workdir: str) -> None:
    """Creates the workdir and its missing parents. What `_validate_workdir` cannot see (a read-only or
    virtual file system, such as /proc, a full disk) is a ConfigError naming the path, not a traceback."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        _fail("--workdir", workdir, f"cannot be created ({e.strerror}); choose a path you can write")


def _validate_model(cfg) -> None:
    m = cfg.model
    for key in ("vocab_size", "max_len", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff"):
        if m[key] <= 0:
            _fail(f"model.{key}", m[key], "must be a positive integer")
    if m.d_model % m.n_heads:
        _fail("model.n_heads", m.n_heads, f"must divide model.d_model={m.d_model}")
    if m.n_heads % m.n_kv_heads:
        _fail("model.n_kv_heads", m.n_kv_heads, f"must divide model.n_heads={m.n_heads}")
    for key, choices in (("positional", POSITIONAL), ("norm", NORMS), ("norm_position", NORM_POSITIONS),
                         ("activation", ACTIVATIONS), ("param_dtype", DTYPES), ("compute_dtype", DTYPES),
                         ("attention", ATTENTION_KERNELS), ("parametrization", PARAMETRIZATIONS)):
        _check_choice(cfg, f"model.{key}", choices)
    if m.positional == "rope" and (m.d_model // m.n_heads) % 2:
        _fail("model.positional", m.positional, f"RoPE needs an even head dim, got {m.d_model // m.n_heads}")
    if not 0.0 <= m.dropout < 1.0:
        _fail("model.dropout", m.dropout, "must be in [0, 1)")
    if m.vocab_size <= NUM_SPECIAL_TOKENS:
        _fail("model.vocab_size", m.vocab_size,
              f"must exceed the {NUM_SPECIAL_TOKENS} reserved special tokens")
    if m.parametrization == "mup" and m.mup_base_width <= 0:
        _fail("model.mup_base_width", m.mup_base_width,
              "must be a positive integer: the d_model of the base model that muP transfers from")
    if m.mup_base_head_dim < 0:
        _fail("model.mup_base_head_dim", m.mup_base_head_dim,
              "must be the base model's head dim (> 0), or 0 for mup_base_width / n_heads")
    if not (isinstance(m.embed_lr_mult, (int, float)) and 0 < m.embed_lr_mult < float("inf")):
        _fail("model.embed_lr_mult", m.embed_lr_mult,
              "must be a positive finite factor on optim.lr for embeddings, readout, biases and norms (1 = off)")
    if m.readout_zero_init and m.tie_embeddings:
        _fail("model.readout_zero_init", m.readout_zero_init,
              "zero-initialises the LM head, which is the token embedding when tied; set model.tie_embeddings=False")


def _validate_data(cfg) -> None:
    m, d = cfg.model, cfg.data
    if d.seq_len <= 0 or d.batch_size <= 0:
        _fail("data.seq_len/batch_size", (d.seq_len, d.batch_size), "must be positive")
    if d.split_seed < 0:  # the split hashes non-negative seeds only
        _fail("data.split_seed", d.split_seed, "must be a non-negative integer")
    if d.seq_len > m.max_len and cfg.mode not in ALIGN_MODES:  # post-training reads align.*, not data.*
        _fail("data.seq_len", d.seq_len, f"must not exceed model.max_len={m.max_len}")
    try:
        source = parse_source(d.source)
    except DataSourceError as e:
        raise ConfigError(str(e)) from None
    if source.is_text:
        if m.vocab_size < 256 + NUM_SPECIAL_TOKENS:
            _fail("model.vocab_size", m.vocab_size,
                  f"a byte-level BPE vocabulary needs at least {256 + NUM_SPECIAL_TOKENS} ids (256 bytes + specials)")
        if not 0.0 < d.val_fraction < 1.0:
            _fail("data.val_fraction", d.val_fraction, "must be in (0, 1)")
        if d.text_split not in ("file", "paragraph"):
            _fail("data.text_split", d.text_split, "must be one of file, paragraph")
        if d.tokenizer_sample_bytes <= 0:
            _fail("data.tokenizer_sample_bytes", d.tokenizer_sample_bytes, "must be a positive number of bytes")
    else:
        if d.markov_order < 1:
            _fail("data.markov_order", d.markov_order, "must be >= 1")
        if not d.markov_concentration > 0:
            _fail("data.markov_concentration", d.markov_concentration, "must be > 0")
        if not 2 <= (d.markov_alphabet or 2) <= m.vocab_size - NUM_SPECIAL_TOKENS:
            _fail("data.markov_alphabet", d.markov_alphabet,
                  f"must be 0 (= model.vocab_size - {NUM_SPECIAL_TOKENS}) or in [2, model.vocab_size - "
                  f"{NUM_SPECIAL_TOKENS}={m.vocab_size - NUM_SPECIAL_TOKENS}]")
        alphabet = d.markov_alphabet or m.vocab_size - NUM_SPECIAL_TOKENS
        if alphabet ** (d.markov_order + 1) > MAX_MARKOV_TABLE:
            _fail("data.markov_alphabet", alphabet,
                  f"alphabet**(order+1) = {alphabet ** (d.markov_order + 1):.3g} transition entries exceed "
                  f"{MAX_MARKOV_TABLE:.3g}; set a smaller data.markov_alphabet or markov_order")
    if d.eval_batches <= 0:
        _fail("data.eval_batches", d.eval_batches, "must be >= 1")


def _validate_optim(cfg) -> None:
    o, steps, batch_size = cfg.optim, cfg.train.steps, cfg.data.batch_size
    if not o.lr > 0:
        _fail("optim.lr", o.lr, "must be > 0")
    _check_choice(cfg, "optim.schedule", SCHEDULES)
    # The schedule counts optimizer updates: RL makes rl.epochs * rl.minibatches of them per step.
    if cfg.mode in RL_MODES:
        per_step = max(cfg.rl.epochs, 1) * max(cfg.rl.minibatches, 1)  # (< 1 is reported by _validate_align)
        updates, unit = steps * per_step, "updates (train.steps * rl.epochs * rl.minibatches)"
    else:
        updates, unit = steps, "train.steps"
    if o.warmup_steps < 0 or o.warmup_steps > updates:
        _fail("optim.warmup_steps", o.warmup_steps, f"must be in [0, {updates}], the run's {unit}")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        _fail("optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
    if not 0.0 < o.wsd_decay_fraction <= 1.0:
        _fail("optim.wsd_decay_fraction", o.wsd_decay_fraction, "must be in (0, 1]")
    if o.weight_decay < 0 or o.clip_norm < 0:
        _fail("optim.weight_decay/clip_norm", (o.weight_decay, o.clip_norm), "must be >= 0")
    if o.grad_accum < 1 or batch_size % o.grad_accum:
        _fail("optim.grad_accum", o.grad_accum, f"must be >= 1 and divide data.batch_size={batch_size}")


def _validate_train(t) -> None:
    for key in ("steps", "eval_every", "log_every", "checkpoint_every", "max_to_keep"):
        if t[key] <= 0:
            _fail(f"train.{key}", t[key], "must be positive")


def _validate_parallel(cfg, device_count: int | None, process_count: int | None) -> tuple[int, ...]:
    """Device and process counts, the mesh and the rules; returns the resolved mesh shape."""
    d, p, grad_accum = cfg.data, cfg.parallel, cfg.optim.grad_accum
    if device_count is None or process_count is None:
        import jax  # deferred: validation of everything else needs no backend

        device_count = jax.device_count() if device_count is None else device_count
        process_count = jax.process_count() if process_count is None else process_count
    if process_count > 1 and p.num_devices != -1:
        _fail("parallel.num_devices", p.num_devices, "must be -1 in a multi-process job (every host feeds its devices)")
    if process_count > 1 and (d.batch_size % process_count or mesh_batch_shards(p.mesh, device_count) % process_count):
        _fail("data.batch_size", d.batch_size, f"and the data*fsdp mesh size must divide by the {process_count} "
              "processes, each of which feeds its own rows of the batch")
    num_devices = device_count if p.num_devices == -1 else p.num_devices
    if not 0 < num_devices <= device_count:
        _fail("parallel.num_devices", p.num_devices, f"must be -1 or in [1, {device_count}] (visible devices)")
    mesh = resolve_mesh_shape(p.mesh, num_devices)
    batch_shards = mesh[0] * mesh[1]
    if (d.batch_size // grad_accum) % batch_shards:
        _fail("data.batch_size", d.batch_size,
              f"each microbatch ({d.batch_size // grad_accum}) must divide by data*fsdp={batch_shards}")
    rule_names = [name for name, _ in p.rules]
    for name, axes in p.rules:
        for axis in (axes,) if isinstance(axes, str) else (axes or ()):
            if axis not in MESH_AXES:
                _fail("parallel.rules", name, f"maps to unknown mesh axis {axis!r}; mesh axes are {MESH_AXES}")
    for needed in ("batch", "embed", "mlp", "heads", "kv_heads", "vocab"):
        if needed not in rule_names:
            _fail("parallel.rules", rule_names, f"needs a rule for logical axis {needed!r}")
    return mesh


def _validate_heads_fit_mesh(m, p, mesh) -> None:
    """Attention splits heads across the axes their rule names; a head cannot be split between devices.
    Fewer KV heads than shards is grouped-query attention's usual case: each KV head is then computed on
    shards / n_kv_heads devices."""
    for key, logical in (("n_heads", "heads"), ("n_kv_heads", "kv_heads")):
        axes = _rule_axes(p.rules, logical)
        shards = math.prod(mesh[MESH_AXES.index(axis)] for axis in axes)
        if m[key] % shards and not (logical == "kv_heads" and shards % m[key] == 0):
            _fail(f"model.{key}", m[key], f"must divide by {shards}, the size of the mesh axes {axes} that "
                  f"parallel.rules shards {logical!r} over (parallel.mesh={tuple(p.mesh)})"
                  + (f", or divide {shards}" if logical == "kv_heads" else "")
                  + f"; pick a mesh whose {'*'.join(axes)} size fits model.{key}, or change the rule")


def _validate_sample(cfg):
    s = cfg.sample
    for key in ("num_samples", "max_new_tokens", "batch_size"):
        if s[key] < 1:
            _fail(f"sample.{key}", s[key], "must be >= 1")
    if not s.temperature >= 0:
        _fail("sample.temperature", s.temperature, "must be >= 0 (0 = greedy)")
    if s.top_k < 0:
        _fail("sample.top_k", s.top_k, "must be >= 0 (0 = off)")
    if not 0 < s.top_p <= 1:
        _fail("sample.top_p", s.top_p, "must be in (0, 1] (1 = off)")
    if not 0 <= s.min_p <= 1:
        _fail("sample.min_p", s.min_p, "must be in [0, 1] (0 = off)")
    if any(not isinstance(x, str) or not x for x in s.stop_strings):
        _fail("sample.stop_strings", s.stop_strings, "must be a tuple of non-empty strings")
    if s.beam_width < 0:
        _fail("sample.beam_width", s.beam_width, "must be >= 0 (0 = sample instead of beam search)")
    if s.beam_width and s.num_samples > s.beam_width:
        _fail("sample.num_samples", s.num_samples, f"must not exceed sample.beam_width={s.beam_width}")
    if s.regex and s.json_schema:
        _fail("sample.regex", s.regex, "set sample.regex or sample.json_schema, not both")
    if s.beam_width and (s.regex or s.json_schema or s.stop_strings):
        _fail("sample.beam_width", s.beam_width, "beam search supports neither constraints nor stop strings; "
              "set sample.beam_width=0 to sample")
    if s.scorer and s.beam_width:
        _fail("sample.scorer", s.scorer, "best-of-N samples num_samples completions; set sample.beam_width=0")
    if s.scorer and not os.path.isdir(s.scorer):
        _fail("sample.scorer", s.scorer, "is not a directory; give the workdir of a mode=reward run")
    if cfg.mode == "sample":
        if bool(s.prompt) == bool(s.prompts_file):
            _fail("sample.prompt", s.prompt, "mode=sample needs exactly one of sample.prompt and sample.prompts_file")
        if s.prompts_file and not os.path.isfile(s.prompts_file):
            _fail("sample.prompts_file", s.prompts_file, "does not exist; give a file with one prompt per line")


def _validate_align(cfg, batch_shards: int) -> None:
    """Post-training keys. Whether init_from / reward_model / data exist is checked when they are opened."""
    a, r, o = cfg.align, cfg.rl, cfg.dpo
    if not a.data and a.task not in ("arithmetic", "shakespeare"):
        _fail("align.task", a.task, "must be arithmetic or shakespeare (or set align.data to a JSONL file)")
    if a.data and not os.path.isfile(a.data):
        _fail("align.data", a.data, "does not exist; give a JSONL file (see README, Post-training) or leave it empty "
              "to use align.task")
    for key in ("init_from", "reward_model", "reference"):
        if a[key] and not os.path.isdir(a[key]):
            _fail(f"align.{key}", a[key], "is not a directory; give the workdir of an earlier run")
    if a.num_examples < 2 or a.batch_size < 1:
        _fail("align.num_examples/batch_size", (a.num_examples, a.batch_size), "must be >= 2 and >= 1")
    if not 0.0 < a.val_fraction < 1.0:
        _fail("align.val_fraction", a.val_fraction, "must be in (0, 1)")
    if a.split_seed < 0:
        _fail("align.split_seed", a.split_seed, "must be a non-negative integer")
    for key in ("group_size", "max_new_tokens", "epochs", "minibatches", "kl_horizon"):
        if r[key] < 1:
            _fail(f"rl.{key}", r[key], "must be >= 1")
    if cfg.mode in ("ppo", "grpo", "rloo"):
        rows = a.batch_size * r.group_size
        if rows % batch_shards or (rows // r.minibatches) % batch_shards or rows % r.minibatches:
            _fail("align.batch_size", a.batch_size, f"times rl.group_size={r.group_size} ({rows} rollouts) must "
                  f"divide into rl.minibatches={r.minibatches} minibatches, each divisible by data*fsdp={batch_shards}")
    elif cfg.mode == "label" and (a.batch_size * a.samples_per_prompt) % batch_shards:
        _fail("align.batch_size", a.batch_size, f"times align.samples_per_prompt={a.samples_per_prompt} (the rows "
              f"judged together) must divide by data*fsdp={batch_shards}")
    elif cfg.mode != "label" and a.batch_size % batch_shards:
        _fail("align.batch_size", a.batch_size, f"must divide by data*fsdp={batch_shards}")
    if cfg.mode == "rloo" and r.group_size < 2:
        _fail("rl.group_size", r.group_size, "RLOO's leave-one-out baseline needs at least 2 samples per prompt")
    if cfg.mode == "grpo" and r.group_size < 2:
        _fail("rl.group_size", r.group_size, "GRPO's group baseline needs at least 2 samples per prompt")
    for key in ("kl_coef", "vf_coef", "entropy_coef", "ptx_coef", "value_clip", "missing_eos_penalty"):
        if not r[key] >= 0:
            _fail(f"rl.{key}", r[key], "must be >= 0")
    if not r.temperature > 0 or not 0 < r.top_p <= 1 or not 0 < r.clip < 1 or not r.kl_target > 0:
        _fail("rl.temperature/top_p/clip/kl_target", (r.temperature, r.top_p, r.clip, r.kl_target),
              "need temperature > 0, top_p in (0, 1], clip in (0, 1), kl_target > 0")
    if not (0 <= r.gamma <= 1 and 0 <= r.lam <= 1):
        _fail("rl.gamma/lam", (r.gamma, r.lam), "must be in [0, 1]")
    if r.kl_estimator not in KL_ESTIMATORS:
        _fail("rl.kl_estimator", r.kl_estimator, f"must be one of {', '.join(KL_ESTIMATORS)}")
    if cfg.mode in ("ppo", "grpo", "rloo") and not r.kl_in_reward and r.kl_estimator == "k1" and r.kl_coef > 0:
        _fail("rl.kl_estimator", r.kl_estimator, "k1 as a loss term (rl.kl_in_reward=False) has zero expected "
              "gradient and regularises nothing; use k3 (or k2), or put the KL in the reward")
    if r.value_model not in ("separate", "shared"):
        _fail("rl.value_model", r.value_model, "must be separate or shared")
    if r.advantage not in GRPO_ADVANTAGES:
        _fail("rl.advantage", r.advantage, f"must be one of {', '.join(GRPO_ADVANTAGES)}")
    if r.loss_aggregation not in LOSS_AGGREGATIONS:
        _fail("rl.loss_aggregation", r.loss_aggregation, f"must be one of {', '.join(LOSS_AGGREGATIONS)}")
    if not o.beta > 0 or o.loss not in DPO_LOSSES or not 0 <= o.label_smoothing < 0.5:
        _fail("dpo.beta/loss/label_smoothing", (o.beta, o.loss, o.label_smoothing),
              "need beta > 0, loss sigmoid or ipo, label_smoothing in [0, 0.5)")
    if a.judge not in JUDGES:
        _fail("align.judge", a.judge, f"must be one of {', '.join(JUDGES)}")
    if cfg.mode == "label" and a.judge == "reward_model" and not a.reward_model:
        _fail("align.reward_model", a.reward_model, "align.judge=reward_model needs the workdir of a mode=reward run")
    if cfg.mode == "label" and a.samples_per_prompt < 2:
        _fail("align.samples_per_prompt", a.samples_per_prompt, "must be >= 2 to form a preference pair")
    if cfg.mode in ("ppo", "grpo", "rloo", "dpo", "label") and not a.init_from:
        _fail("align.init_from", a.init_from, f"mode={cfg.mode} starts from a trained policy; give the workdir of a "
              "mode=sft (or pretrain) run")
