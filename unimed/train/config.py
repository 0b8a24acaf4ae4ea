"""The typed training config: YAML + ``a.b=c`` overrides, validated by OmegaConf against dataclasses.

A key that is not a field (``optimizer.learning_rate`` for ``optimizer.lr``) or a value of the wrong
type is a :class:`unimed.errors.UserError` naming the key and the file, never a silent default.
The resolved config is saved beside the checkpoints (``save_folder/config.yaml``) so evaluation
rebuilds the same model. Reading and validating a config imports no torch, mosaicml-streaming,
Composer, transformers or DALI: the dataclasses it is made of live in light modules
(:mod:`unimed.streaming.config`, :mod:`unimed.train.model_config`, the loss and augmentation registries).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from unimed.errors import UserError, yaml_error
from unimed.streaming.augment import get_augmentation
from unimed.streaming.config import LoaderConfig
from unimed.train.loss import get_loss
from unimed.train.model_config import ModelConfig

__all__ = [
    "LR_SCALING",
    "OptimizerConfig",
    "SchedulerConfig",
    "ZeroShotConfig",
    "FSDPConfig",
    "EMAConfig",
    "TrainConfig",
    "load_config",
    "save_config",
    "config_from_dict",
    "config_path",
    "config_yaml",
    "packaged_configs",
    "YAML_DIR",
]


LR_SCALING: tuple[str, ...] = ("none", "linear", "sqrt")


@dataclass
class OptimizerConfig:
    """AdamW; no weight decay on gains, biases and the logit scale (every parameter of fewer than 2 dims).

    The learning rate used is ``lr`` scaled by the rule ``lr_scaling`` from ``reference_batch_size``
    (the global batch ``lr`` was tuned for) to the run's global batch: ``none`` uses ``lr`` as given;
    ``linear`` multiplies it by global / reference (Goyal et al., the usual rule for AdamW CLIP runs
    that keep the step count); ``sqrt`` by the square root of that ratio. The rate used is logged.
    """

    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    weight_decay: float = 0.2
    lr_scaling: str = "none"  # none | linear | sqrt
    reference_batch_size: int | None = None  # the global batch `lr` is for (needed by linear and sqrt)


@dataclass
class SchedulerConfig:
    """Linear warm-up then cosine to ``alpha_f`` times the peak."""

    warmup: str = "2000ba"
    alpha_f: float = 0.0


@dataclass
class ZeroShotConfig:
    """Zero-shot evaluation during training (``interval`` 0 disables it) and the sets it runs."""

    sets: list[str] = field(default_factory=list)  # catalog names (under data_root) or MDS folders
    data_root: str | None = None  # folder holding the catalog sets as <name>/ MDS folders
    prompts: str | None = None  # a prompts YAML replacing the bundled ones
    interval: str = "0ba"  # e.g. 500ba; 0ba: only when training ends (if sets are given)
    batch_size: int = 64
    max_samples: int | None = None  # per set, for quick checks


@dataclass
class EMAConfig:
    """A moving average of the trainable weights, checkpointed and evaluated (see unimed.train.ema)."""

    enabled: bool = False
    decay: float = 0.999  # per optimizer step; the average's horizon is about 1 / (1 - decay) steps


@dataclass
class FSDPConfig:
    """FSDP2 through Composer; used when more than one process runs (or when ``enabled`` is True)."""

    enabled: bool | None = None  # None: when the world size exceeds 1
    state_dict_type: str = "sharded"  # sharded | full
    reshard_after_forward: bool = True
    activation_checkpointing: bool = False


@dataclass
class TrainConfig:
    """One training run: model, data, optimization, checkpoints, evaluation."""

    run_name: str = "unimed-clip"
    seed: int = 17
    model: ModelConfig = field(default_factory=ModelConfig)
    data: LoaderConfig = field(default_factory=LoaderConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    max_duration: str = "10ep"
    # Samples per optimizer step over all processes; each process then takes global_batch_size / world
    # size (an indivisible setting is an error). None: data.batch_size per process, whatever the world.
    global_batch_size: int | None = None
    # Composer's micro-batching would split the contrastive loss (fewer negatives, another loss): only
    # None or the per-process batch itself are accepted.
    device_train_microbatch_size: int | None = None
    compile: bool = False  # torch.compile every transformer block of both towers
    device: str = "auto"  # auto | cpu | gpu
    precision: str = "auto"  # auto: amp_bf16 on GPU, fp32 on CPU
    grad_clip_norm: float | None = None
    save_folder: str | None = None  # local folder or s3:// / gs:// URL; None: no checkpoints
    save_interval: str = "1000ba"
    save_num_checkpoints_to_keep: int = -1
    autoresume: bool = True  # continue from the latest checkpoint in save_folder
    load_path: str | None = None  # start from this checkpoint (weights and state) instead
    console_log_interval: str = "10ba"
    speed_window: int = 20  # batches averaged by SpeedMonitor
    loss_log: str | None = None  # append {"step", "loss", ...} per batch as JSON lines (rank 0)
    export_path: str | None = None  # also write the final weights as one plain state dict file


def _format_error(exc: OmegaConfBaseException, where: str) -> UserError:
    key = getattr(exc, "full_key", None) or getattr(exc, "key", None)
    first = str(exc).splitlines()[0]
    if key and "is not Optional" in first:  # e.g. data.shards=null
        return UserError(
            f"{where}: {key} cannot be null: give a value (data.shards=[] to train from data.mix only)"
            if str(key) == "data.shards"
            else f"{where}: {key} cannot be null: give a value"
        )
    return UserError(f"{where}: {first}" + (f" (key {key!r})" if key and str(key) not in first else ""))


#: List settings a user may give as one string (``data.shards=/data/x``): taken as a one-item list.
_LIST_KEYS = ("data.shards", "data.flip_modalities", "data.augmentations", "zeroshot.sets")


def _listify(doc: dict, overrides: list[str]) -> tuple[dict, list[str]]:
    """``doc`` and ``overrides`` with a plain string under a list key made a one-item list."""
    for key in _LIST_KEYS:
        section, name = key.split(".")
        part = doc.get(section) if isinstance(doc, dict) else None
        if isinstance(part, dict) and isinstance(part.get(name), str):
            part[name] = [part[name]]
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.strip() in _LIST_KEYS and value.strip() and value.strip()[0] not in "[" and value.strip() != "null":
            o = f"{key}=[{value}]"
        out.append(o)
    return doc, out


def config_from_dict(doc: dict, overrides: list[str] | None = None, where: str = "config") -> TrainConfig:
    """Merge ``doc`` and dotted ``overrides`` onto the schema; return the validated ``TrainConfig``."""
    schema = OmegaConf.structured(TrainConfig)
    try:
        bad = [o for o in overrides or [] if "=" not in o]
        if bad:
            raise UserError(f"override {bad[0]!r} is not key=value")
        doc, overrides = _listify(dict(doc or {}), list(overrides or []))
        merged = OmegaConf.merge(schema, OmegaConf.create(doc))
        if overrides:
            given = {o.partition("=")[0].strip() for o in overrides}
            # One source of data: an override naming one of mix / shards replaces the file's other one.
            if "data.mix" in given and "data.shards" not in given:
                overrides = ["data.shards=[]", *overrides]
            elif "data.shards" in given and "data.mix" not in given:
                overrides = ["data.mix=null", *overrides]
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _format_error(exc, where) from None
    assert isinstance(cfg, TrainConfig)
    _check(cfg, where)
    return cfg


_DURATION = re.compile(r"^\d+(\.\d+)?(ep|ba|sp|tok|dur)$")


def _check(cfg: TrainConfig, where: str) -> None:
    """Values the schema's types admit but training cannot use, each a one-line UserError naming the key."""
    if cfg.data.batch_size < 1:
        raise UserError(f"{where}: data.batch_size {cfg.data.batch_size}: at least 1 sample per process")
    if cfg.global_batch_size is not None and cfg.global_batch_size < 1:
        raise UserError(f"{where}: global_batch_size {cfg.global_batch_size}: at least 1")
    if not _DURATION.match(str(cfg.max_duration)):
        raise UserError(f"{where}: max_duration {cfg.max_duration!r}: a number and a unit, e.g. 10ep or 5000ba")
    get_loss(cfg.model.loss, where=f"{where}: model.loss")
    for name in cfg.data.augmentations:
        get_augmentation(name, where=f"{where}: data.augmentations")
    if not 0.0 < cfg.ema.decay < 1.0:
        raise UserError(f"{where}: ema.decay {cfg.ema.decay}: between 0 and 1 (e.g. 0.999)")
    if cfg.data.mix and cfg.data.shards:
        raise UserError(
            f"{where}: data.mix and data.shards are both set: give one (a mix file weighs its "
            "streams itself; shards are weighted by their size)"
        )
    if cfg.data.image_size != cfg.model.vision.image_size:
        raise UserError(
            f"{where}: data.image_size {cfg.data.image_size} differs from model.vision.image_size "
            f"{cfg.model.vision.image_size}: the loader must crop to the size the image tower takes"
        )
    if cfg.data.context_length != cfg.model.text.context_length:
        raise UserError(
            f"{where}: data.context_length {cfg.data.context_length} differs from "
            f"model.text.context_length {cfg.model.text.context_length}"
        )


#: The training YAMLs shipped inside the package (``train/yamls`` of the source tree links here).
YAML_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "yamls")


def packaged_configs() -> list[str]:
    """Names of the shipped training configs (``demo-cpu``, ``vitb16-unimed``, ...)."""
    return sorted(f[:-5] for f in os.listdir(YAML_DIR) if f.endswith(".yaml"))


def config_path(name_or_path: str) -> str:
    """A training YAML by path, or by the name of a shipped one (``demo-cpu`` or ``demo-cpu.yaml``)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    shipped = os.path.join(YAML_DIR, os.path.basename(name_or_path))
    for candidate in (shipped, shipped + ".yaml"):
        if os.path.isfile(candidate):
            return candidate
    raise UserError(
        f"training config {name_or_path!r} does not exist: give a YAML path or one of {', '.join(packaged_configs())}"
    )


def load_config(path: str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training YAML (a path or a shipped config's name), apply ``key=value`` overrides, validate.

    Relative shard, mix, tokenizer and pretrained paths in the file stay relative to the working
    directory (the command is run from the repository root, like the Makefile's).
    """
    import yaml

    path = config_path(path)
    try:
        doc = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except OmegaConfBaseException as exc:
        raise _format_error(exc, path) from None
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from None
    if not isinstance(doc, dict):
        raise UserError(f"{path}: a training config is a YAML mapping (model:, data:, ...), not {type(doc).__name__}")
    return config_from_dict(doc, overrides, where=path)


def save_config(cfg: TrainConfig, path: str) -> None:
    """Write the resolved config as YAML (beside the checkpoints)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    OmegaConf.save(OmegaConf.structured(cfg), path)


def config_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML text (what ``save_config`` writes)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
