"""Frozen pretrained encoders and their on-disk feature cache.

A frozen encoder is a pure function of (encoder files, preprocessing settings, input bytes), so each embedding
is stored under the hash of exactly that: a namespace per (encoder fingerprint + settings), a key per content
hash of the file or text. A changed file gets a new key; a changed encoder or setting a new namespace. Shards
are safetensors files written atomically; a corrupt shard is deleted and its entries are recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from polymodal.data.io import resolve_path
from polymodal.data.media import MediaError, decode_audio, decode_image
from polymodal.data.redact import quote_value
from polymodal.data.schema import Modality
from polymodal.data.validate import Problem, is_missing
from polymodal.encoders.pretrained import EncoderRef, build, cache_root
from polymodal.errors import UserError
from polymodal.preprocess.pretrained import PretrainedInputs

log = logging.getLogger("polymodal")
NOTHING = np.zeros(0, np.float32)  # the cache's entry for a file with nothing to embed (a video without sound)


class FeatureCache:
    def __init__(self, root: Path | None, namespace: dict[str, Any]):
        ns = hashlib.sha256(json.dumps(namespace, sort_keys=True).encode()).hexdigest()[:20]
        self.dir = Path(root or cache_root() / "features") / ns
        self._index: dict[str, Path] | None = None  # key -> the shard that holds it
        self.namespace = namespace

    def _load(self) -> dict[str, Path]:
        """Which shard holds each key, from the shards' headers only: embeddings stay on disk until asked for,
        so a cache larger than memory is fine."""
        if self._index is None:
            from safetensors import safe_open

            self._index = {}
            for shard in sorted(self.dir.glob("shard-*.safetensors")):
                try:
                    with safe_open(str(shard), framework="numpy") as f:
                        self._index.update(dict.fromkeys(f.keys(), shard))
                except Exception as e:  # truncated or garbled: drop it, its rows are recomputed
                    log.warning("feature cache shard %s is unreadable (%s); deleting it", shard, e)
                    shard.unlink(missing_ok=True)
        return self._index

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        from safetensors import safe_open

        index = self._load()
        by_shard: dict[Path, list[str]] = {}
        for k in dict.fromkeys(keys):
            if k in index:
                by_shard.setdefault(index[k], []).append(k)
        out: dict[str, np.ndarray] = {}
        for shard, wanted in by_shard.items():
            try:
                with safe_open(str(shard), framework="numpy") as f:
                    out.update({k: f.get_tensor(k) for k in wanted})
            except Exception as e:  # damaged after it was indexed: forget it, its rows are recomputed
                log.warning("feature cache shard %s is unreadable (%s); deleting it", shard, e)
                shard.unlink(missing_ok=True)
                self._index = {k: s for k, s in index.items() if s != shard}
                out = {k: v for k, v in out.items() if k not in wanted}
        return out

    def put(self, items: dict[str, np.ndarray]) -> None:
        if not items:
            return
        from safetensors.numpy import save_file

        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "namespace.json").write_text(json.dumps(self.namespace, indent=1, sort_keys=True))
        name = f"shard-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.safetensors"
        tmp = self.dir / f".{name}.tmp"
        # Token outputs are stored as they come (fp16); pooled embeddings as fp32.
        save_file({k: np.ascontiguousarray(v, dtype=np.float16 if v.dtype == np.float16 else np.float32)
                   for k, v in items.items()}, str(tmp))  # fmt: skip
        os.replace(tmp, self.dir / name)
        self._load().update(dict.fromkeys(items, self.dir / name))


def _decoded_key(item: Any) -> str:
    """Cache key of decoded content; the prefix keeps it apart from the keys of file bytes and texts."""
    if isinstance(item, str):
        return hashlib.sha256(item.encode("utf-8")).hexdigest()  # a text is its own content, as in `_content`
    a = np.ascontiguousarray(item)
    return hashlib.sha256(f"array:{a.dtype.str}:{a.shape}:".encode() + a.tobytes()).hexdigest()


def _content(value: Any, modality: Modality, base_dir: Path) -> bytes:
    if modality is Modality.TEXT:
        return str(value).encode("utf-8")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    path = resolve_path(str(value), base_dir)
    if not path.exists():
        raise MediaError(f"file not found: {quote_value(path.name, 40)}")
    return path.read_bytes()


class FrozenExtractor:
    """Embeds one column with a frozen pretrained encoder, reading and writing the feature cache."""

    def __init__(
        self,
        ref: EncoderRef,
        modality: Modality,
        st: dict[str, Any],
        cache_dir: Path | None = None,
        batch_size: int = 32,
        device: str | None = None,
        progress: bool = True,
        runtime: str = "torch",
        tokens: bool = False,
    ):
        """`tokens`: cache the encoder's token outputs (fp16, the real tokens of each row) rather than its pooled
        embedding; rows come back as (n, tokens, dim), zero-padded."""
        from polymodal.encoders.onnx_int8 import RUNTIMES

        if runtime not in RUNTIMES:
            raise UserError(f"frozen encoder runtime must be one of {list(RUNTIMES)}, not {runtime!r}")
        # A video's frames: one vector per time step, always (the temporal model reads them), like tokens.
        tokens = tokens or modality is Modality.VIDEO
        self.ref, self.modality, self.st, self.runtime, self.tokens = ref, modality, st, runtime, tokens
        self.inputs = PretrainedInputs(Modality.IMAGE if modality is Modality.VIDEO else modality, st)
        # "dim" is the encoder's output size, recorded in the state once known, and a video's limits only refuse
        # files: neither is a setting of the input.
        settings = {k: v for k, v in st.items() if k not in ("dim", "max_seconds", "max_pixels")}
        namespace = {"encoder": ref.fingerprint, "kind": ref.kind, "settings": settings}
        if runtime != "torch":  # int8 embeddings differ a little from fp32 ones: their own namespace
            namespace["runtime"] = runtime
        if tokens:
            namespace["tokens"] = True
        self.cache = FeatureCache(cache_dir, namespace)
        self._int8 = None
        self.batch_size, self.progress = batch_size, progress
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._module = None
        self.stats = {"hits": 0, "misses": 0, "encode_seconds": 0.0}

    @property
    def module(self) -> torch.nn.Module:
        if self._module is None:
            if self.modality is Modality.VIDEO:  # an image encoder on each frame, or a video model on the clip
                from polymodal.encoders.video_pretrained import build_frames

                module = build_frames(self.ref).to(self.device).eval()
            else:
                module = build(self.ref, self.modality, pad_id=self.st.get("pad_id", 0)).to(self.device).eval()
            if self.modality is Modality.IMAGE:
                module = module.to(memory_format=torch.channels_last)
            self._module = module
        return self._module

    def _decode(self, data: bytes) -> Any:
        if self.modality is Modality.IMAGE:
            return decode_image(data, self.st["size"], fit=self.st.get("fit", "squash"))
        if self.modality is Modality.AUDIO and self.st.get("track"):  # a video's sound track (None: it has none)
            from polymodal.data.video import decode_video

            st = self.st
            return decode_video(data, 1, 8, st["sample_rate"], max_seconds=st["max_seconds"],
                                max_pixels=st["max_pixels"]).sound  # fmt: skip
        if self.modality is Modality.AUDIO:
            return decode_audio(data, self.st["sample_rate"])
        if self.modality is Modality.VIDEO:  # the frames at the encoder's size; the sound track is another input
            from polymodal.data.video import decode_video

            st = self.st
            limits = {"max_seconds": st["max_seconds"], "max_pixels": st["max_pixels"]}
            clip = decode_video(
                data, st["frames"], st["size"], 8000, fit=st.get("fit", "squash"), fps=st.get("fps"), **limits
            )
            return clip.frames
        return data.decode("utf-8")

    def __call__(
        self, column: str, values: list[Any], base_dir: Path, decoded: list[Any] | None = None
    ) -> tuple[np.ndarray, np.ndarray, list[Problem]]:
        """(embeddings (n, dim), present (n,), problems) of the files or texts in `values`. `decoded`: the rows
        already decoded as this encoder reads them (a video's frames decoded for its sound track), used for the
        rows the cache misses instead of decoding them again."""
        keys: list[str | None] = [None] * len(values)
        problems: list[Problem] = []
        raw: dict[int, bytes] = {}
        for i, v in enumerate(values):
            if is_missing(v):
                continue
            try:
                data = _content(v, self.modality, base_dir)
            except MediaError as e:
                problems.append(Problem(i, column, str(e)))
                continue
            keys[i] = hashlib.sha256(data).hexdigest()
            raw[i] = data

        def load(i: int) -> Any:
            if decoded is not None and decoded[i] is not None:
                return decoded[i]
            return self._safe_decode(column, i, raw[i])

        emb, present = self._embed(column, keys, load, problems)
        return emb, present, problems

    def decode(self, values: list[Any], base_dir: Path) -> list[Any]:
        """The files or texts of `values` decoded as this encoder reads them; None where missing or unreadable."""
        out: list[Any] = []
        for v in values:
            try:
                out.append(None if is_missing(v) else self._decode(_content(v, self.modality, base_dir)))
            except MediaError:
                out.append(None)
        return out

    def embed_decoded(self, column: str, items: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings, present) of already-decoded items (image arrays, waveforms or texts; None = absent), such
        as the noisy copies of the robustness test; cached under the hash of the decoded content."""
        keys = [None if is_missing(x) else _decoded_key(x) for x in items]
        return self._embed(column, keys, lambda i: items[i], [])

    def _embed(
        self, column: str, keys: list[str | None], load: Callable[[int], Any], problems: list[Problem]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Look `keys` up in the cache and encode the rest; `load(i)` gives row i decoded (or a Problem)."""
        n = len(keys)
        rows = [i for i, k in enumerate(keys) if k]
        found = self.cache.get([keys[i] for i in rows])
        # Each distinct content is encoded once, however many rows repeat it.
        first: dict[str, int] = {}
        for i in rows:
            if keys[i] not in found:
                first.setdefault(keys[i], i)
        misses = sum(keys[i] not in found for i in rows)
        self.stats["hits"] += len(rows) - misses
        self.stats["misses"] += misses
        new = self._encode_missing(column, list(first.values()), load, keys, problems)
        self.cache.put(new)
        found = {k: v for k, v in (found | new).items() if v.size}  # NOTHING: the row is absent
        dim = next(iter(found.values())).shape[-1] if found else int(self.st.get("dim", 0))
        present = np.zeros(n, dtype=bool)
        if self.tokens:  # zero-padded to the longest row seen (a text: its fitted length)
            # (a video: its time steps, so that a batch of empty cells has them too)
            length = max([self.st.get("max_len", self.st.get("steps", 0))] + [v.shape[0] for v in found.values()])
            out = np.zeros((n, length, dim), dtype=np.float16)
            for i, k in enumerate(keys):
                if k in found:
                    out[i, : len(found[k])], present[i] = found[k], True
            return out, present
        out = np.zeros((n, dim), dtype=np.float32)
        for i, k in enumerate(keys):
            if k in found:
                out[i], present[i] = found[k], True
        return out, present

    def _encode_missing(
        self, column: str, todo: list[int], load: Callable[[int], Any], keys: list, problems: list[Problem]
    ) -> dict[str, np.ndarray]:
        new: dict[str, np.ndarray] = {}
        if not todo:
            return new
        from concurrent.futures import ThreadPoolExecutor

        from rich.progress import Progress

        start = time.perf_counter()
        with (
            ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool,
            Progress(disable=not self.progress, transient=True) as bar,
        ):
            task = bar.add_task(f"embedding {column} with {self.ref.name}", total=len(todo))
            step = max(1, self.batch_size // self.st["frames"]) if self.modality is Modality.VIDEO else self.batch_size
            for s in range(0, len(todo), step):
                chunk = todo[s : s + step]
                decoded = list(pool.map(load, chunk))
                ok = [(i, d) for i, d in zip(chunk, decoded, strict=True) if not isinstance(d, Problem | None)]
                # None: read, and nothing to embed (a video without a sound track): cached as such, an empty
                # array, so the row is absent again without decoding the file
                new |= {keys[i]: NOTHING for i, d in zip(chunk, decoded, strict=True) if d is None}
                problems += [d for d in decoded if isinstance(d, Problem)]
                if ok and self.modality is Modality.VIDEO:  # every frame normalized like an image
                    arr = np.stack([self.inputs(list(d)) for _, d in ok])
                    new |= dict(zip([keys[i] for i, _ in ok], self._torch_encode(arr), strict=True))
                elif ok:
                    arr = self.inputs([d for _, d in ok], pad_to_longest=True)
                    emb = self._int8_encode(arr) if self.runtime == "onnx-int8" else self._torch_encode(arr)
                    new |= {keys[i]: emb[j] for j, (i, _) in enumerate(ok)}
                bar.advance(task, len(chunk))
        self.stats["encode_seconds"] += time.perf_counter() - start
        return new

    def _torch_encode(self, arr: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(arr).to(self.device)
        if x.dim() == 4:  # images: convolutions run ~2x faster channels-last on CPUs
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if not self.tokens:
                return self.module(x).float().cpu().numpy()
            hidden = self.module(x, tokens=True).float()
            if self.modality is not Modality.TEXT:  # patches / feature-map cells / frames: all of them
                return list(hidden.half().cpu().numpy())
            real = x != self.st.get("pad_id", 0)
            real[:, 0] = True  # an empty text still has its first (CLS) token
            return [h[m].half().cpu().numpy() for h, m in zip(hidden, real, strict=True)]

    def _int8_encode(self, arr: np.ndarray) -> np.ndarray:
        if self._int8 is None:
            from polymodal.encoders.onnx_int8 import OnnxInt8Encoder

            # One graph per encoder, kept under the cache root whichever feature cache folder is in use.
            self._int8 = OnnxInt8Encoder(self.module, self.ref.fingerprint, self.modality, arr[:2], cache_root())
        return self._int8(arr)

    def _safe_decode(self, column: str, i: int, data: bytes) -> Any:
        try:
            return self._decode(data)
        except MediaError as e:
            return Problem(i, column, str(e))
