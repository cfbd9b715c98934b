"""Beam search (polymodal/tasks/beam.py) against exhaustive search on a tiny vocabulary."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from polymodal.tasks.beam import beam_search, ctc_greedy

PAD, BOS, EOS = 0, 1, 2
WORDS = (3, 4, 5)
V = 6


def toy_logp(prefix: tuple[int, ...]) -> np.ndarray:
    """A fixed next-token distribution for each prefix (seeded by the prefix itself)."""
    rng = np.random.default_rng(abs(hash(prefix)) % (2**32))
    logits = rng.normal(0, 2, size=V)
    return logits - np.log(np.exp(logits).sum())


def step(prefix: np.ndarray, cache):
    return np.stack([toy_logp(tuple(int(t) for t in row)) for row in prefix]), cache


def exhaustive(max_len: int, alpha: float) -> list[tuple[tuple[int, ...], float]]:
    """Every hypothesis (words then <eos>) scored as beam search scores it, best first."""
    out = []
    for n in range(max_len + 1):
        for words in itertools.product(WORDS, repeat=n):
            seq = (BOS, *words)
            total = sum(toy_logp(seq[:i])[seq[i]] for i in range(1, len(seq))) + toy_logp(seq)[EOS]
            out.append(((*words, EOS), total / (n + 1) ** alpha))
    return sorted(out, key=lambda x: -x[1])


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_wide_enough_equals_exhaustive(alpha):
    max_len = 3
    truth = exhaustive(max_len, alpha)  # 1 + 3 + 9 + 27 = 40 hypotheses
    ids, scores = beam_search(step, None, 1, bos=BOS, eos=EOS, pad=PAD, max_len=max_len, beam_size=len(truth),
                              length_penalty=alpha, n_best=5)  # fmt: skip
    for j in range(5):
        got = tuple(int(t) for t in ids[0, j] if t != PAD)
        assert got == truth[j][0]
        assert scores[0, j] == pytest.approx(truth[j][1])


def test_beam_rows_are_independent_and_deterministic():
    a = beam_search(step, None, 3, bos=BOS, eos=EOS, pad=PAD, max_len=4, beam_size=4)
    b = beam_search(step, None, 1, bos=BOS, eos=EOS, pad=PAD, max_len=4, beam_size=4)
    np.testing.assert_array_equal(a[0][0], b[0][0])  # the same prompt: the same text whatever the batch
    np.testing.assert_array_equal(a[0], beam_search(step, None, 3, bos=BOS, eos=EOS, pad=PAD, max_len=4,
                                                    beam_size=4)[0])  # fmt: skip


def test_greedy_is_the_argmax_path():
    ids, _ = beam_search(step, None, 1, bos=BOS, eos=EOS, pad=PAD, max_len=5, beam_size=1)
    seq = [BOS]
    for _ in range(5):
        logp = toy_logp(tuple(seq))
        logp[[BOS, PAD]] = -np.inf
        seq.append(int(np.argmax(logp)))
        if seq[-1] == EOS:
            break
    else:
        seq.append(EOS)
    assert [int(t) for t in ids[0, 0] if t != PAD] == seq[1:]


def test_max_length_and_no_repeat_ngram():
    def repeat(prefix, cache):  # prefers token 3 always, never <eos>
        logp = np.full((len(prefix), V), -5.0)
        logp[:, 3], logp[:, EOS] = -0.1, -20.0
        return logp, cache

    ids, _ = beam_search(repeat, None, 2, bos=BOS, eos=EOS, pad=PAD, max_len=4, beam_size=2)
    assert ids[0, 0].tolist() == [3, 3, 3, 3, EOS]  # the cap: <eos> after max_len tokens
    ids, _ = beam_search(repeat, None, 1, bos=BOS, eos=EOS, pad=PAD, max_len=4, beam_size=2, no_repeat_ngram=1)
    words = [t for t in ids[0, 0].tolist() if t not in (PAD, EOS)]
    assert len(words) == len(set(words))  # no token twice


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    path = [3, 3, 0, 3, 4, 4, 0]
    lp = np.full((1, len(path), V), -10.0)
    lp[0, np.arange(len(path)), path] = -0.01
    ids, _ = ctc_greedy(lp, blank=0)
    assert [t for t in ids[0].tolist() if t] == [3, 3, 4]


def test_rows_that_have_ended_leave_the_batch():
    """Row r's text has r + 1 words (a `shared` value per hypothesis tells the step which row it is): the batch
    shrinks as rows end, each row's result equals decoding it alone, and `shared` follows the rows still live."""
    seen = []

    def step_len(prefix, cache, shared):
        seen.append((prefix.shape[0], shared.tolist()))
        logp = np.full((prefix.shape[0], V), -5.0)
        words = prefix.shape[1] - 1
        for h, r in enumerate(shared):
            logp[h, EOS if words > r else WORDS[(r + words) % 3]] = -0.1
        return logp, cache

    k, rows = 2, 3
    shared = np.repeat(np.arange(rows), k)
    ids, scores = beam_search(step_len, None, rows, bos=BOS, eos=EOS, pad=PAD, max_len=6, beam_size=k,
                              shared=shared)  # fmt: skip
    sizes = [n for n, _ in seen]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] == 6 and sizes[-1] == 2  # row 2 (longest) ends last
    for _, live in seen:  # whole rows, in order, each with its k hypotheses
        assert live == sorted(live) and all(live.count(r) == k for r in set(live))
    assert seen[-1][1] == [2, 2]
    for r in range(rows):
        alone = beam_search(step_len, None, 1, bos=BOS, eos=EOS, pad=PAD, max_len=6, beam_size=k,
                            shared=np.full(k, r))  # fmt: skip
        np.testing.assert_array_equal(ids[r], alone[0][0])
        np.testing.assert_allclose(scores[r], alone[1][0])
        assert [int(t) for t in ids[r, 0] if t != PAD] == [WORDS[(r + i) % 3] for i in range(r + 1)] + [EOS]
