"""Voices: the McAdams-coefficient anonymization of the VoicePrivacy 2020 challenge (baseline B2, Patino et al.).

Each 20 ms frame (10 ms hop, Hann window) gets an LPC envelope (order 20; autocorrelation method: like the
baseline's Burg method it gives a stable all-pole filter, and it needs no JIT compilation). The angles of its
complex poles (the formants) are raised to the power alpha, which moves the formants while the pitch, timing and
words stay; the frame's LPC residual is filtered through the new envelope and the frames are overlap-added.
No model, no training.
"""

from __future__ import annotations

import numpy as np

from polymodal.errors import UserError

DEFAULT_ALPHA = 0.8
LPC_ORDER = 20


def mcadams(
    wave: np.ndarray,
    sample_rate: int,
    alpha: float = DEFAULT_ALPHA,
    win_ms: float = 20.0,
    hop_ms: float = 10.0,
    order: int = LPC_ORDER,
) -> np.ndarray:
    """The anonymized waveform: same length and sample rate as `wave` (mono float), same peak level."""
    from scipy.signal import lfilter

    if not 0.5 <= alpha <= 1.5:
        raise UserError(f"the McAdams coefficient alpha must be between 0.5 and 1.5 (0.8 is the usual), not {alpha}")
    x = np.asarray(wave, dtype=np.float64)
    eps = np.finfo(np.float32).eps
    win_len = int(win_ms * 1e-3 * sample_rate)
    hop = int(hop_ms * 1e-3 * sample_rate)
    if len(x) < win_len or not np.any(x):
        return x.astype(np.float32)
    # Analysis and synthesis windows whose product, overlap-added at this hop, sums to one.
    hann = np.hanning(win_len)
    window = np.sqrt(hann / (hann.sum() / hop))
    out = np.zeros(len(x) + win_len)
    padded = np.concatenate([x, np.zeros(win_len)])
    n_frames = 1 + (len(x) - 1) // hop
    # A tiny dither keeps LPC well-posed on digital silence.
    rng = np.random.default_rng(0)
    for m in range(n_frames):
        frame = padded[m * hop : m * hop + win_len] * window
        frame = frame + eps * rng.standard_normal(win_len)
        a = lpc(frame, order)
        poles = np.roots(a)
        upper = poles[np.imag(poles) > 0]  # one of each conjugate pair; real poles stay as they are
        angles = np.clip(np.angle(upper) ** alpha, 0.0, np.pi)
        moved = np.abs(upper) * np.exp(1j * angles)
        new_poles = np.concatenate([poles[np.imag(poles) == 0], moved, np.conj(moved)])
        a_new = np.real(np.poly(new_poles))
        residual = lfilter(a, [1.0], frame)
        out[m * hop : m * hop + win_len] += lfilter([1.0], a_new, residual) * window
    y = out[: len(x)]
    peak_in, peak_out = np.max(np.abs(x)), np.max(np.abs(y))
    if peak_out > 0 and np.isfinite(peak_out):
        y = y * (peak_in / peak_out)
    return np.nan_to_num(y).astype(np.float32)


def lpc(frame: np.ndarray, order: int) -> np.ndarray:
    """LPC coefficients [1, a1, ..., a_order] by the autocorrelation method (Levinson through solve_toeplitz)."""
    from scipy.linalg import solve_toeplitz

    r = np.correlate(frame, frame, mode="full")[len(frame) - 1 : len(frame) + order]
    r[0] *= 1.0 + 1e-9  # white-noise correction: keeps the system well-conditioned
    return np.concatenate([[1.0], solve_toeplitz(r[:order], -r[1 : order + 1])])


def alpha_for(row: int, seed: int, alpha: float, alpha_range: tuple[float, float] | None) -> float:
    """The coefficient of one recording: `alpha`, or drawn uniformly from `alpha_range` (seeded by seed and row),
    so that an attacker cannot invert one fixed transform."""
    if alpha_range is None:
        return alpha
    lo, hi = alpha_range
    return float(np.random.default_rng([seed, row]).uniform(lo, hi))


def read_wave(source) -> tuple[np.ndarray, int]:
    """(samples x channels float64, sample rate)."""
    import soundfile as sf

    wav, sr = sf.read(source, dtype="float64", always_2d=True)
    if wav.size == 0:
        raise UserError("audio has no samples")
    return wav, sr


def write_wav(wave: np.ndarray, sample_rate: int, target) -> None:
    """16-bit WAV, samples only: no metadata chunks."""
    import soundfile as sf

    sf.write(target, np.clip(wave, -1.0, 1.0), sample_rate, subtype="PCM_16", format="WAV")


def anonymize_audio(source, target, alpha: float = DEFAULT_ALPHA) -> None:
    """Read `source`, anonymize every channel, write `target` as 16-bit WAV at the same rate."""
    wav, sr = read_wave(source)
    write_wav(np.stack([mcadams(wav[:, c], sr, alpha) for c in range(wav.shape[1])], axis=1), sr, target)
