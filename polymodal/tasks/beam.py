"""Batched beam search (greedy is beam size 1) over any decoder step, in numpy: the PyTorch network and the ONNX
Runtime graph decode with this one function, so they cannot disagree.

Every row keeps `beam_size` hypotheses; each step scores all their continuations at once. A hypothesis's score
is the sum of its tokens' log-probabilities (its <eos> included) divided by length ** `length_penalty` (length:
tokens generated, <eos> included; 0: the plain sum). A finished hypothesis only continues with padding at no
cost, so it competes with the unfinished ones on its final score. At `max_len` tokens <eos> is the only choice
left, so nothing is longer. `no_repeat_ngram` n > 0 forbids a token that would repeat an n-gram already in the
hypothesis. Ties go to the lower index (a stable sort), so decoding is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

NEG = -np.inf

Step = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]


def reorder_rows(cache: Any, index: np.ndarray) -> Any:
    """The cache's rows in the order `index` (numpy arrays and torch tensors alike)."""
    if cache is None:
        return None
    if isinstance(cache, tuple | list):
        return type(cache)(reorder_rows(c, index) for c in cache)
    if isinstance(cache, np.ndarray):
        return cache[index]
    import torch

    return cache[torch.as_tensor(index, device=cache.device)]


def _banned(prefix: np.ndarray, n: int) -> list[tuple[int, int]]:
    """(hypothesis, token) pairs that would repeat an n-gram of the hypothesis (its generated tokens)."""
    out = []
    gen = prefix[:, 1:]
    if gen.shape[1] < n - 1 or n < 1:
        return out
    for h in range(gen.shape[0]):
        seq = gen[h].tolist()
        key = tuple(seq[len(seq) - (n - 1) :]) if n > 1 else ()
        for i in range(len(seq) - n + 1):
            if tuple(seq[i : i + n - 1]) == key:
                out.append((h, seq[i + n - 1]))
    return out


def beam_search(
    step: Step,
    cache: Any,
    n_rows: int,
    *,
    bos: int,
    eos: int,
    pad: int,
    max_len: int,
    beam_size: int = 1,
    length_penalty: float = 1.0,
    no_repeat_ngram: int = 0,
    n_best: int = 1,
    forbidden: tuple[int, ...] = (),
    shared: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode `n_rows` rows. `step(prefix, cache) -> (log_probs, cache)`: `prefix` int64 (rows * beam_size, t) of
    each hypothesis's tokens so far (<bos> first), `log_probs` (rows * beam_size, vocab); `cache` holds per
    hypothesis whatever the decoder carries (given for rows * beam_size hypotheses, row r's at r * beam_size + k),
    reordered with `reorder_rows` as hypotheses are kept. `shared`: per hypothesis too, but the same for every
    hypothesis of a row (the memory), so never reordered within rows; when given, `step(prefix, cache, shared)`.
    A row whose hypotheses have all ended leaves the batch: later steps run on the rows still decoding, with their
    cache and `shared` rows. `forbidden`: tokens never generated (besides <bos> and padding). Returns the token ids
    (rows, n_best, max_len + 1), padded with `pad`, <eos> included, and their scores (rows, n_best), best first."""
    k = max(1, int(beam_size))
    n_best = max(1, min(int(n_best), k))
    b = n_rows
    prefix = np.full((b * k, 1), bos, dtype=np.int64)
    scores = np.zeros((b, k))
    scores[:, 1:] = NEG  # one live hypothesis per row at the start, or the beam would hold k copies of it
    finished = np.zeros((b, k), dtype=bool)
    lengths = np.zeros((b, k))
    rows = np.arange(b)  # the rows still decoding, by their index in the input
    ids = np.full((n_rows, n_best, max_len + 1), pad, dtype=np.int64)
    best = np.zeros((n_rows, n_best))

    def settle(done: np.ndarray) -> None:  # rows whose hypotheses have all ended: their n best, kept aside
        final = scores[done] / np.maximum(lengths[done], 1.0) ** length_penalty
        rank = np.argsort(-final, axis=1, kind="stable")[:, :n_best]
        gen = prefix[:, 1:].reshape(len(rows), k, -1)[done]
        chosen = np.take_along_axis(gen, rank[..., None], axis=1)
        ids[rows[done], :, : chosen.shape[2]] = chosen
        best[rows[done]] = np.take_along_axis(final, rank, axis=1)

    for t in range(max_len + 1):
        if len(rows) == 0:
            break
        logp, cache = step(prefix, cache) if shared is None else step(prefix, cache, shared)
        b = len(rows)
        logp = np.array(logp, dtype=np.float64).reshape(b, k, -1)
        v = logp.shape[-1]
        logp[..., [bos, pad, *forbidden]] = NEG
        if t == max_len:  # the longest a hypothesis may be: it ends here
            keep = logp[..., eos].copy()
            logp[:] = NEG
            logp[..., eos] = keep
        if no_repeat_ngram > 0:
            for h, tok in _banned(prefix, no_repeat_ngram):
                logp[h // k, h % k, tok] = NEG
        logp[finished] = NEG
        logp[..., pad] = np.where(finished, 0.0, NEG)  # a finished hypothesis continues with padding, for free
        cand = scores[..., None] + logp
        new_len = lengths + ~finished
        norm = cand / np.maximum(new_len, 1.0)[..., None] ** length_penalty
        order = np.argsort(-norm.reshape(b, k * v), axis=1, kind="stable")[:, :k]
        beam, tok = order // v, order % v
        scores = np.take_along_axis(cand.reshape(b, k * v), order, axis=1)
        lengths = np.take_along_axis(new_len, beam, axis=1)
        finished = np.take_along_axis(finished, beam, axis=1) | (tok == eos)
        parents = (np.arange(b)[:, None] * k + beam).reshape(-1)
        prefix = np.concatenate([prefix[parents], tok.reshape(-1, 1)], axis=1)
        done = finished.all(axis=1)
        if done.any() or t == max_len:
            settle(done | (t == max_len))
            live = np.flatnonzero(~done)
            hyps = (live[:, None] * k + np.arange(k)).reshape(-1)
            parents, prefix = parents[hyps], prefix[hyps]
            scores, lengths, finished, rows = scores[live], lengths[live], finished[live], rows[live]
            if shared is not None and len(live) < len(done):
                shared = reorder_rows(shared, hyps)
        cache = reorder_rows(cache, parents)
    return ids, best


def pack(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """The engine's text outputs: float64 (rows, n_best, 1 + max_len + 1), the score then the token ids."""
    return np.concatenate([np.maximum(scores, -1e30)[..., None], ids.astype(np.float64)], axis=-1)


def ctc_greedy(log_probs: np.ndarray, blank: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Best-path CTC decoding of (rows, frames, vocab) log-probabilities: the most likely token per frame, repeats
    merged, blanks dropped. Returns the token ids (rows, frames) padded with `blank` and the path's log-probability."""
    best = log_probs.argmax(-1)
    score = np.take_along_axis(log_probs, best[..., None], axis=-1)[..., 0].sum(-1)
    out = np.full(best.shape, blank, dtype=np.int64)
    for r, path in enumerate(best):
        keep = [int(t) for i, t in enumerate(path) if t != blank and (i == 0 or t != path[i - 1])]
        out[r, : len(keep)] = keep
    return out, score
