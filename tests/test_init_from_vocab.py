"""`encoders.init_from` with text and categorical inputs: vocabularies are fitted per table, so embedding rows are
matched by the word or category itself. A second table that orders its words differently (and has words the first
lacks, and lacks some it has) must get each shared word's own row, never the row at the same position."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

FAST = dict(embed_dim=8, hidden=8, batch_size=16, max_epochs=1, progress=False)


def table(words: list[str], kinds: list[str], n: int, seed: int) -> pd.DataFrame:
    """Word frequencies follow the list's order (the vocabulary is sorted by count), so two lists in another order
    give two vocabularies in another order."""
    rng = np.random.default_rng(seed)
    p = np.arange(len(words), 0, -1, dtype=float)
    note = [" ".join(rng.choice(words, size=3, p=p / p.sum())) for _ in range(n)]
    q = np.arange(len(kinds), 0, -1, dtype=float)
    kind = rng.choice(kinds, size=n, p=q / q.sum())
    return pd.DataFrame({"note": note, "kind": kind, "x": rng.normal(size=n), "y": rng.integers(0, 2, n)})


def rows(p, name: str, key: str, values: list[str], vocab_key: str) -> dict[str, torch.Tensor]:
    """{value: its embedding row} of input `name`'s table `key`, by the folder's own vocabulary."""
    net, st = p.engine.net, p.engine.pipeline.preprocessor.state[name]
    table = net.encoders[net.keys[name]].state_dict()[key]
    vocab = [str(v) for v in (st[vocab_key] if vocab_key == "vocab" else st["vocabs"][0])]
    return {v: table[vocab.index(v) + 2].clone() for v in values if v in vocab}


def test_embedding_rows_follow_the_words(tmp_path, pinned_torch):
    from polymodal import MultimodalPredictor

    first = table(["cat", "dog", "owl", "yak", "emu"], ["red", "blue", "green"], 160, 0)
    second = table(["emu", "yak", "bee", "dog", "cat"], ["green", "red", "blue", "grey"], 160, 1)
    first.to_csv(tmp_path / "a.csv", index=False)
    second.to_csv(tmp_path / "b.csv", index=False)
    pre = MultimodalPredictor(label="y", **FAST).fit(tmp_path / "a.csv")
    pre.save(tmp_path / "pre")

    init = {"encoders.init_from": {"note": str(tmp_path / "pre"), "tabular:categorical": str(tmp_path / "pre")}}
    p = MultimodalPredictor(label="y", **FAST, **init, **{"encoders.init_freeze": True}).fit(tmp_path / "b.csv")
    assert p.engine.pipeline.preprocessor.state["note"]["vocab"][:2] == ["emu", "yak"]  # another order than a.csv's

    shared = ["cat", "dog", "yak", "emu"]
    want, got = rows(pre, "note", "embed.weight", shared, "vocab"), rows(p, "note", "embed.weight", shared, "vocab")
    assert set(got) == set(shared) and all(torch.equal(got[w], want[w]) for w in shared)
    positions = [torch.equal(got[w], want_at) for w in shared for want_at in want.values() if want_at is not want[w]]
    assert not any(positions)  # no word took another word's row
    bee = rows(p, "note", "embed.weight", ["bee"], "vocab")["bee"]
    assert not any(torch.equal(bee, r) for r in want.values())  # a new word keeps fresh weights

    colours = ["red", "blue", "green"]
    want, got = (rows(m, "tabular:categorical", "embeds.0.weight", colours, "vocabs") for m in (pre, p))
    assert all(torch.equal(got[c], want[c]) for c in colours)


@pytest.mark.parametrize("words", [["ant", "bat", "cod"]])
def test_no_shared_word_is_said(tmp_path, pinned_torch, words, caplog):
    from polymodal import MultimodalPredictor

    table(["cat", "dog", "owl"], ["red", "blue"], 64, 0).to_csv(tmp_path / "a.csv", index=False)
    table(words, ["red", "blue"], 64, 1).to_csv(tmp_path / "b.csv", index=False)
    MultimodalPredictor(label="y", **FAST).fit(tmp_path / "a.csv").save(tmp_path / "pre")
    init = {"encoders.init_from": {"note": str(tmp_path / "pre")}}
    with caplog.at_level("WARNING", logger="polymodal.model.init_from"):
        MultimodalPredictor(label="y", **FAST, **init).fit(tmp_path / "b.csv")
    assert "no word or category of embed.weight is in the folder's vocabulary" in caplog.text
