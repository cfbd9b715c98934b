"""The one config tree: every setting of a model, named by a dotted path (`train.lr`, `fusion.name`,
`encoders.image.embed_dim`).

`MultimodalPredictor(**kwargs)`, `polymodal fit --config cfg.yaml` (flags and `--set path=value` override the
file), a tuning search space and the model folder's config.json all read and write this one object. Plain
dataclasses, no heavy imports: loading a model for inference reads it too.
"""

from __future__ import annotations

import difflib
import json
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union

from polymodal.errors import UserError

IMAGE_FITS = ("squash", "pad")
BAD_ROW_POLICIES = ("error", "skip")
PRESETS = (None, "scratch", "pretrained")


class ConfigError(UserError):
    """A setting that does not exist or has the wrong type; the message names the key and the closest valid one."""


def _choices(*values: Any) -> dict[str, Any]:
    return {"choices": values}


@dataclass
class DataConfig:
    label: str | None = None  # the column to predict
    problem_type: str | None = None  # binary | multiclass | regression; None: inferred from the label
    modalities: dict[str, str] = field(default_factory=dict)  # column -> text | image | audio | numeric | categorical
    ignore: list[str] = field(default_factory=list)  # columns left out
    # A column naming groups of rows (e.g. a question type): evaluate/compare/report score each of its values
    # beside the overall metrics. Never a model input.
    group_by: str | None = None
    valid_fraction: float = 0.1  # validation split of the training rows when no validation table is given
    on_bad_rows: str = field(default="error", metadata=_choices(*BAD_ROW_POLICIES))
    # Tables larger than memory: read in chunks, media decoded on the fly in loader worker processes. auto:
    # stream a file whose decoded rows would take more than a quarter of the available memory.
    streaming: str = field(default="auto", metadata=_choices("auto", "on", "off"))
    chunk_rows: int = 4096  # rows per chunk when streaming

    def left_out(self) -> list[str]:
        """The columns that are not inputs: `ignore`, plus the group column."""
        extra = [self.group_by] if self.group_by and self.group_by not in self.ignore else []
        return list(self.ignore) + extra


@dataclass
class PreprocessConfig:
    image_size: int = 64
    image_fit: str = field(default="squash", metadata=_choices(*IMAGE_FITS))  # pad: keep the aspect ratio
    sample_rate: int = 16000
    max_audio_seconds: float = 10.0
    n_mels: int = 40
    n_mfcc: int = 20
    max_text_tokens: int = 128
    max_vocab: int = 30000
    min_token_count: int = 1
    max_categories: int = 1000
    # Filled by `fit` from the encoders section, not a user setting: input -> {"ref": EncoderRef as dict,
    # "mode": "frozen" | "finetune", "layers": N or None, "lora": bool}.
    pretrained: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModalityEncoderConfig:
    """The encoder of one modality's columns."""

    name: str | None = None  # pretrained encoder (registry name, HF id or folder); None or "scratch": scratch
    embed_dim: int | None = None  # None: encoders.embed_dim


@dataclass
class TabularEncoderConfig:
    embed_dim: int | None = None  # None: encoders.embed_dim


@dataclass
class EncodersConfig:
    embed_dim: int = 128  # embedding size of every encoder, unless its modality sets its own
    preset: str | None = field(default=None, metadata=_choices(*PRESETS))  # pretrained: the offline defaults
    freeze: bool = True  # pretrained encoders: frozen (features cached) or fine-tuned
    finetune_layers: int | None = None  # fine-tuning: only the top N layers
    lora: bool = False  # fine-tuning: LoRA adapters instead of the encoder's weights
    cache_dir: str | None = None  # feature cache of frozen encoders (default ~/.cache/polymodal)
    # What runs frozen encoders in the feature pass: torch (fp32), or onnx-int8 (the encoder exported once to an
    # int8 ONNX graph and run by ONNX Runtime: faster on a CPU; its embeddings have their own cache namespace).
    frozen_runtime: str = field(default="torch", metadata=_choices("torch", "onnx-int8"))
    # Cache a frozen encoder's token outputs (word, patch or frame tokens, fp16) instead of its pooled embedding,
    # for the token-level fusions; None: when the fusion reads tokens (a pooled fusion then pools them itself).
    frozen_tokens: bool | None = None
    columns: dict[str, str] = field(default_factory=dict)  # column -> pretrained encoder, over the modality's
    text: ModalityEncoderConfig = field(default_factory=ModalityEncoderConfig)
    image: ModalityEncoderConfig = field(default_factory=ModalityEncoderConfig)
    audio: ModalityEncoderConfig = field(default_factory=ModalityEncoderConfig)
    numeric: TabularEncoderConfig = field(default_factory=TabularEncoderConfig)
    categorical: TabularEncoderConfig = field(default_factory=TabularEncoderConfig)

    def dim(self, modality: str) -> int:
        """The embedding size of a modality's encoders."""
        own = getattr(self, modality).embed_dim
        return self.embed_dim if own is None else own


@dataclass
class FusionConfig:
    # early | late | attention | gmu | tensor | low_rank | cross_attention; token-level: relation | film |
    # token_transformer
    name: str = "attention"
    hidden: int = 128  # width of the fusion and the task head
    dropout: float = 0.1
    options: dict[str, Any] = field(default_factory=dict)  # the fusion's own settings, e.g. {heads: 8, layers: 3}


@dataclass
class TrainConfig:
    max_epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 6
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = 1  # processes (GPUs) per machine
    strategy: str = "auto"  # ddp: one process per device, gradients all-reduced (Lightning DDP)
    num_nodes: int = 1  # machines (torchrun and SLURM runs fill this in from their environment)
    num_workers: int | None = None  # loader worker processes; None: 0 in memory, up to 4 when streaming
    precision: str = "32-true"
    modality_dropout: float = 0.0
    augment: bool = True  # light augmentation of training batches (images: shifts, brightness; audio: audio_warp)
    # Random frequency warp of scratch audio features in training (VTLP-style): each clip's spectrum f -> s f^b,
    # log s and log b uniform in +-audio_warp; 0: off. Less dependence on the voice (another speaker, McAdams).
    audio_warp: float = 0.0
    progress: bool = True
    encoder_lr: float | None = None  # learning rate of fine-tuned pretrained encoders (default: lr / 10)
    # Where this run keeps the checkpoint written after each epoch, so a killed run resumes (the CLI: a hidden
    # sibling of the output folder), and whether to discard one found there. The run's, not the model's: never
    # saved with the model.
    checkpoint_dir: str | None = field(default=None, metadata={"run": True})
    restart: bool = field(default=False, metadata={"run": True})

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not _is_run_field(TrainConfig, k)}


@dataclass
class PrivacyConfig:
    """Personal data removed from every table before anything is fitted, logged or saved (polymodal.privacy)."""

    anonymize: bool = False
    operator: str = field(default="placeholder", metadata=_choices("placeholder", "mask", "hash"))  # hash: salted
    ner_model: str | None = None  # token-classification model (HF id or folder) for names, places, organizations
    faces: str = field(default="blur", metadata=_choices("blur", "box", "keep"))
    voice: str = field(default="mcadams", metadata=_choices("mcadams", "keep"))
    alpha: float = 0.8  # McAdams coefficient
    alpha_range: list[float] | None = None  # [low, high]: a random alpha per recording (seeded)
    seed: int = 0
    output_dir: str | None = None  # where the anonymized copies go (None: a temporary folder, removed after fit)


@dataclass
class AlignConfig:
    """Cross-modal alignment (`polymodal align`, `MultimodalRetriever`): which columns share one embedding space.
    An aligned model reads data (label, modalities, valid_fraction, on_bad_rows), preprocess, encoders and train
    too; fusion is not used (each column is projected on its own)."""

    target: str | None = None  # the anchor column every query column is aligned to
    query: list[str] = field(default_factory=list)  # the columns aligned to the target
    dim: int = 64  # size of the shared space
    hidden: int = 256  # width of each column's projection head
    dropout: float = 0.1
    temperature: float = 0.07  # initial softmax temperature (learned)


@dataclass
class RLConfig:
    """Reinforcement learning (`polymodal rl train`, `polymodal.rl.AgentConfig`): an SB3 agent whose policy reads
    the env's observations through polymodal encoders and a fusion. Its own section: the policy network's fusion
    and sizes are set here, not in fusion/encoders (those describe a table model)."""

    env_id: str | None = None  # a gymnasium env id, e.g. BabyAI-GoToLocalS6N2-v0
    algo: str = field(default="ppo", metadata=_choices("dqn", "ppo"))
    steps: int = 50_000  # environment steps to train for
    fusion: str = "early"  # any pooled or token-level fusion name
    embed_dim: int = 64  # embedding size of every observation encoder
    hidden: int = 128  # width of the fusion
    seed: int = 0
    n_envs: int | None = None  # parallel envs; None: 1 for DQN, 8 for PPO
    extractor: bool = True  # False: SB3's default CombinedExtractor (the benchmark's baseline)
    text: str = field(default="tokens", metadata=_choices("tokens", "bow"))  # Text obs -> token ids | word counts
    hide: list[str] = field(default_factory=list)  # observation keys the agent does not see
    modalities: dict[str, str] = field(default_factory=dict)  # observation key -> modality, over the inferred one
    # per key, e.g. {"image": {"widths": [8]}}; MiniGrid/BabyAI views: {"image": {"codes": 16, "grid": 7}}
    encoder_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    env_kwargs: dict[str, Any] = field(default_factory=dict)  # gymnasium.make keywords
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # SB3's, over polymodal's defaults per algorithm
    net_arch: list[int] | None = None
    model: str | None = None  # transfer: a polymodal model folder whose encoders the policy starts from
    transfer: dict[str, str] = field(default_factory=dict)  # observation key -> the model's input name
    freeze: bool = True  # transferred encoders frozen, or trained on
    threads: int = 1  # torch CPU threads: RL runs many tiny batches, where more threads only add contention
    eval_every: int = 5_000  # steps between evaluations (the learning curve)
    eval_episodes: int = 50
    vocab_resets: int = 200  # env resets sampled to build the vocabulary of Text observations


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "privacy": PrivacyConfig,
    "preprocess": PreprocessConfig,
    "encoders": EncodersConfig,
    "fusion": FusionConfig,
    "train": TrainConfig,
    "align": AlignConfig,
    "rl": RLConfig,
}

# The keywords `MultimodalPredictor` took before the tree (and still takes), and where each now lives.
FLAT_KEYWORDS: dict[str, str] = {
    "label": "data.label",
    "problem_type": "data.problem_type",
    "modalities": "data.modalities",
    "ignore": "data.ignore",
    "valid_fraction": "data.valid_fraction",
    "on_bad_rows": "data.on_bad_rows",
    "streaming": "data.streaming",
    "chunk_rows": "data.chunk_rows",
    "embed_dim": "encoders.embed_dim",
    "preset": "encoders.preset",
    "freeze": "encoders.freeze",
    "finetune_layers": "encoders.finetune_layers",
    "lora": "encoders.lora",
    "cache_dir": "encoders.cache_dir",
    "text_encoder": "encoders.text.name",
    "image_encoder": "encoders.image.name",
    "audio_encoder": "encoders.audio.name",
    "anonymize": "privacy.anonymize",
    "hidden": "fusion.hidden",
    "dropout": "fusion.dropout",
    **{f.name: f"train.{f.name}" for f in fields(TrainConfig)},
}


@dataclass
class Config:
    """The whole tree. `Config.from_dict`, `from_yaml`, `get`/`set` by dotted path, `to_dict`/`to_yaml`."""

    data: DataConfig = field(default_factory=DataConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    encoders: EncodersConfig = field(default_factory=EncodersConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    # ---- reading and writing ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        cfg = cls()
        cfg.update(d)
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Config:
        """A YAML or JSON file of the tree (nested sections, or dotted keys, or both)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        text = path.read_text()
        if path.suffix == ".json":
            d = json.loads(text)
        else:
            import yaml

            try:
                d = yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise ConfigError(f"{path} is not valid YAML: {e}") from None
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ConfigError(f"{path} must hold a mapping of settings, not {type(d).__name__}")
        return cls.from_dict(d)

    from_yaml = from_file

    def to_dict(self, internal: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not internal:
            d["preprocess"].pop("pretrained", None)
            d["train"] = self.train.to_dict()
        return d

    def to_yaml(self, path: str | os.PathLike[str] | None = None) -> str:
        import yaml

        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    # ---- dotted paths ----------------------------------------------------------------------------------
    @classmethod
    def paths(cls) -> list[str]:
        """Every user setting's dotted path (dict-valued settings such as `data.modalities` are one leaf)."""
        return [p for p, _ in _leaves(cls, "")]

    def get(self, path: str) -> Any:
        obj, name = self._parent(path)
        return getattr(obj, name)

    def set(self, path: str, value: Any) -> None:
        """Set one setting; a section path (`fusion`) takes a mapping, or a string for sections with a name."""
        obj, name = self._parent(path)
        hint = _hints(type(obj))[name]
        current = getattr(obj, name)
        if is_dataclass(current):
            if isinstance(value, str) and any(f.name == "name" for f in fields(current)):
                value = {"name": value}
            if is_dataclass(value):
                value = asdict(value)
            if not isinstance(value, dict):
                raise ConfigError(f"{path} is a section: give a mapping of its settings, not {value!r}")
            for k, v in value.items():
                self.set(f"{path}.{k}", v)
            return
        meta = {f.name: f.metadata for f in fields(obj)}[name]
        value = _check(value, hint, path)
        if "choices" in meta and value not in meta["choices"]:
            close = difflib.get_close_matches(str(value), [str(c) for c in meta["choices"] if c is not None], 1)
            hint_ = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{path} must be one of {list(meta['choices'])}, not {value!r}{hint_}")
        setattr(obj, name, value)

    def update(self, d: dict[str, Any], prefix: str = "") -> Config:
        """Apply a (nested and/or dotted) mapping of settings."""
        for key, value in d.items():
            path = f"{prefix}{key}"
            obj, name = self._parent(path)
            if isinstance(value, dict) and is_dataclass(getattr(obj, name)):
                self.update(value, prefix=f"{path}.")
            else:
                self.set(path, value)
        return self

    def _parent(self, path: str) -> tuple[Any, str]:
        if not isinstance(path, str) or not path:
            raise ConfigError(f"a setting's path must be a dotted string such as 'train.lr', not {path!r}")
        parts = path.split(".")
        obj: Any = self
        for i, part in enumerate(parts):
            names = [f.name for f in fields(obj)]
            if part not in names:
                raise ConfigError(unknown_key_message(".".join(parts[: i + 1]), path))
            if {f.name: f for f in fields(obj)}[part].metadata.get("internal"):
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is set by polymodal itself, not a setting")
            if i < len(parts) - 1:
                obj = getattr(obj, part)
                if not is_dataclass(obj):
                    raise ConfigError(f"{'.'.join(parts[: i + 1])} is a setting, not a section: {path!r} is unknown")
        return obj, parts[-1]

    def copy(self) -> Config:
        import copy

        return copy.deepcopy(self)

    def diff(self) -> dict[str, Any]:
        """The settings that differ from the defaults, by dotted path."""
        default = Config()
        return {p: self.get(p) for p in self.paths() if self.get(p) != default.get(p)}


class TreeSettings:
    """For a model object that holds its config tree as `config_`: the settings read most, by their old names."""

    config_: Config

    @property
    def label(self) -> str | None:
        return self.config_.data.label

    @property
    def train_config(self) -> TrainConfig:
        return self.config_.train

    @property
    def cache_dir(self) -> Path | None:
        return Path(self.config_.encoders.cache_dir) if self.config_.encoders.cache_dir else None


# Names other toolkits use for a setting, so the error can point at ours.
ALIASES = {
    "learning_rate": "lr", "epochs": "max_epochs", "num_epochs": "max_epochs", "wd": "weight_decay",
    "bs": "batch_size", "embedding_dim": "embed_dim", "embedding_size": "embed_dim", "hidden_size": "hidden",
    "hidden_dim": "hidden", "type": "name", "fusion_type": "name", "early_stopping_patience": "patience",
    "target": "label", "label_column": "label", "modality": "modalities",
}  # fmt: skip


def closest_key(key: str) -> str | None:
    """The valid path a mistyped one most likely meant."""
    valid = Config.paths() + list(SECTIONS)
    parent, _, last = key.rpartition(".")
    last = ALIASES.get(last, last)
    if f"{parent}.{last}".lstrip(".") in valid:
        return f"{parent}.{last}".lstrip(".")
    siblings = {p.rpartition(".")[2]: p for p in valid if p.rpartition(".")[0] == parent}
    match = difflib.get_close_matches(last, list(siblings), 1, cutoff=0.6)
    if match:
        return siblings[match[0]]
    anywhere = [p for p in valid if p.rpartition(".")[2] == last]
    if anywhere:
        return anywhere[0]
    match = difflib.get_close_matches(key, valid, 1, cutoff=0.5)
    if match:
        return match[0]
    by_last = {p.rpartition(".")[2]: p for p in valid}
    match = difflib.get_close_matches(last, list(by_last), 1, cutoff=0.6)
    return by_last[match[0]] if match else None


def unknown_key_message(key: str, path: str | None = None) -> str:
    """'unknown setting ...; did you mean ...?' with the closest valid path."""
    close = closest_key(key if path is None else path)
    hint = f"; did you mean {close!r}?" if close else f"; valid sections: {', '.join(SECTIONS)}"
    return f"unknown setting {path or key!r}{hint}"


def _is_run_field(cls: type, name: str) -> bool:
    return bool({f.name: f for f in fields(cls)}[name].metadata.get("run"))


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _leaves(cls: type, prefix: str) -> list[tuple[str, Any]]:
    out = []
    hints = _hints(cls)
    for f in fields(cls):
        if f.metadata.get("internal"):
            continue
        t = hints[f.name]
        if is_dataclass(t):
            out += _leaves(t, f"{prefix}{f.name}.")
        else:
            out.append((f"{prefix}{f.name}", t))
    return out


def leaf_type(path: str) -> Any:
    """The type hint of a setting, for search spaces and CLI parsing."""
    for p, t in _leaves(Config, ""):
        if p == path:
            return t
    raise ConfigError(unknown_key_message(path))


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _check(value: Any, t: Any, path: str) -> Any:
    """`value` as type `t`, or a ConfigError naming the path. ints pass as floats; nothing else is converted."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if t is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(value, a, path)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{path} must be {' or '.join(_type_name(a) for a in args)}, not {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, not {value!r}")
        vt = args[1] if args else Any
        return {str(k): _check(v, vt, f"{path}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, not {value!r}")
        return [_check(v, args[0] if args else Any, path) for v in value]
    if t is bool:
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif t is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif t is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
    elif isinstance(value, t):
        return value
    raise ConfigError(f"{path} must be {_type_name(t)}, not {value!r} ({type(value).__name__})")


def parse_value(path: str, text: str) -> Any:
    """A `--set path=value` string as the setting's type (YAML syntax: 1e-3, true, [a, b], {k: v}, null)."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    t = leaf_type(path)
    if _accepts_str(t) and not isinstance(value, str) and value is not None and not _accepts(t, value):
        value = text  # a name that YAML would read as a number or a boolean
    return value


def _accepts(t: Any, value: Any) -> bool:
    try:
        _check(value, t, "")
        return True
    except ConfigError:
        return False


def _accepts_str(t: Any) -> bool:
    return t is str or (typing.get_origin(t) in (Union, types.UnionType) and str in typing.get_args(t))


_ENCODER_FIELDS = {f.name for f in fields(EncodersConfig)}


def build_config(config: Config | dict | str | os.PathLike[str] | None = None, **settings: Any) -> Config:
    """A Config from a base (tree, mapping or YAML/JSON file) and keyword settings on top: the flat keywords of
    `MultimodalPredictor` (`lr=`, `fusion=`, `text_encoder=`, ...), sections (`train={...}`), dotted paths
    (`**{"train.lr": 1e-3}`), `preprocess=` as a mapping, `encoders=` as {column: encoder name}."""
    if isinstance(config, Config):
        cfg = config.copy()
    elif isinstance(config, dict):
        cfg = Config.from_dict(config)
    elif config is None:
        cfg = Config()
    else:
        cfg = Config.from_file(config)
    for key, value in settings.items():
        if key == "fusion" and isinstance(value, str):
            cfg.set("fusion.name", value)
        elif key == "encoders" and isinstance(value, dict) and not set(value) & _ENCODER_FIELDS:
            cfg.set("encoders.columns", value)  # the flat keyword: {column: encoder name}
        elif key == "preprocess" and isinstance(value, PreprocessConfig):
            cfg.set("preprocess", {k: v for k, v in asdict(value).items() if k != "pretrained"})
        elif key in FLAT_KEYWORDS:
            if value is None:
                continue  # None: keep the default (or the base's value)
            if key == "modalities" and isinstance(value, dict):
                value = {c: getattr(m, "value", m) for c, m in value.items()}
            cfg.set(FLAT_KEYWORDS[key], value)
        else:
            cfg.set(key, value)
    return cfg


def from_legacy(saved: dict[str, Any], preprocess: dict[str, Any] | None = None) -> Config:
    """The tree of a model folder written before it existed (config.json with flat keys)."""
    cfg = Config()
    cfg.set("data.label", saved["label"])
    cfg.set("data.problem_type", saved["schema"]["problem_type"])
    cfg.set("data.valid_fraction", saved.get("valid_fraction", 0.1))
    cfg.set("data.ignore", saved["schema"].get("ignored", []))
    cfg.set("fusion", {"name": saved["fusion"], "hidden": saved["hidden"], "dropout": saved["dropout"]})
    cfg.set("encoders.embed_dim", saved["embed_dim"])
    train = {k: v for k, v in saved.get("train", {}).items() if k in {f.name for f in fields(TrainConfig)}}
    cfg.update({"train": train})
    if preprocess is not None:
        known = {f.name for f in fields(PreprocessConfig)}
        cfg.update({"preprocess": {k: v for k, v in preprocess.items() if k in known and k != "pretrained"}})
    return cfg
