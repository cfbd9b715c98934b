"""Pretrained Hugging Face decoders for text outputs (`decoder.pretrained`), offline, on tiny models built from a
config here: GPT-2 given cross-attention (frozen: only what is new learns), T5's decoder with LoRA (only the
adapters change), fit / predict strings / beam n-best / save and load (identical predictions, no download, the
source folder gone), the export and compress refusals and the configuration errors."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from synth import FAST, make_table

from polymodal.errors import UserError

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "a", "red", "blue", "cat", "dog", "sits", "here"]


def save_tokenizer(folder) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Tiny 'pretrained' models with the tokenizer: a GPT-2 (no cross-attention yet), a T5 and a BART."""
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        GPT2Config,
        GPT2LMHeadModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    root = tmp_path_factory.mktemp("hf_pretrained")
    torch.manual_seed(0)
    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, vocab_size=len(WORDS))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=16, **ids))
    t5 = T5ForConditionalGeneration(T5Config(d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1,
                                             num_heads=2, decoder_start_token_id=0, **ids))  # fmt: skip
    bart = BartForConditionalGeneration(
        BartConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                   encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=16, decoder_start_token_id=2, **ids)
    )  # fmt: skip
    for name, model in (("gpt2", gpt2), ("t5", t5), ("bart", bart)):
        model.save_pretrained(root / name)
        save_tokenizer(root / name)
    return root


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_table")
    df = make_table(folder, 64, seed=5)
    df["words"] = [f"a {'blue' if y // 2 else 'red'} {'dog' if y % 2 else 'cat'} sits here" for y in df["y"]]
    df = df.drop(columns=["y", "score"])
    df.loc[[2, 5], "image"] = None  # absent inputs, as everywhere
    df.loc[[3], "caption"] = None
    for col in ("image", "clip"):
        df[col] = [None if pd.isna(v) else str(folder / v) for v in df[col]]
    return df


def settings(source, train: str, epochs: int = 3) -> dict:
    return dict(FAST, problem_type="text", max_epochs=epochs, patience=epochs, embed_dim=16, hidden=16,
                decoder={"pretrained": str(source), "train": train, "lora_rank": 2, "dim": 16, "max_length": 6,
                         "label_smoothing": 0.1})  # fmt: skip


def fit_recording(monkeypatch, label_df, cfg):
    """Fit, returning the predictor and the decoder's weights as they were before training."""
    from polymodal.predictor import MultimodalPredictor
    from polymodal.tasks.hf_decoder import HFDecoder

    before: dict[str, torch.Tensor] = {}
    init = HFDecoder.__init__

    def recording(self, *a, **k):
        init(self, *a, **k)
        before.update({n: p.detach().clone() for n, p in self.named_parameters()})

    monkeypatch.setattr(HFDecoder, "__init__", recording)
    p = MultimodalPredictor(label="words", **cfg).fit(label_df)
    monkeypatch.setattr(HFDecoder, "__init__", init)
    return p, before


def changed(head, before) -> set[str]:
    return {n for n, p in head.named_parameters() if not torch.equal(p.detach(), before[n])}


@pytest.fixture(scope="module")
def offline():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    yield
    mp.undo()


def test_gpt2_frozen_learns_only_the_new_layers(pretrained, table, tmp_path, monkeypatch, offline, pinned_torch):
    from transformers import GPT2LMHeadModel

    from polymodal.predictor import MultimodalPredictor

    p, before = fit_recording(monkeypatch, table, settings(pretrained / "gpt2", "frozen"))
    head = p.engine.net.head
    moved = changed(head, before)
    # What GPT-2 did not have, the cross-attention, and the projection to its width learn; nothing else moves.
    assert moved and all("crossattention" in n or "ln_cross_attn" in n or n.startswith("proj.") for n in moved)
    assert any("crossattention" in n for n in moved) and "proj.weight" in moved
    original = GPT2LMHeadModel.from_pretrained(pretrained / "gpt2").state_dict()
    mine = head.model.state_dict()
    assert all(torch.equal(mine[k], v) for k, v in original.items() if "attn.bias" not in k)
    pred = p.predict(table)
    vocab = set(WORDS[4:])
    assert len(pred) == len(table) and all(isinstance(s, str) and set(s.split()) <= vocab for s in pred)
    nb = p.predict_text(table.head(8), beam_size=3, n_best=2)
    assert (nb["score_1"] >= nb["score_2"]).all()
    # The folder holds the decoder's config and tokenizer: it loads with the source folder gone, offline.
    p.save(tmp_path / "m")
    assert (tmp_path / "m" / "decoder" / "config.json").is_file()
    assert (tmp_path / "m" / "decoder" / "tokenizer.json").is_file()
    moved_away = tmp_path / "gone"
    shutil.move(pretrained / "gpt2", moved_away)
    try:
        back = MultimodalPredictor.load(tmp_path / "m")
        assert back.predict(table).tolist() == pred.tolist()
        with pytest.raises(UserError, match="pretrained Hugging Face decoder"):
            from polymodal.optimize.export import export_onnx

            export_onnx(tmp_path / "m", tmp_path / "m.onnx")
        from polymodal.optimize.compress import compress

        with pytest.raises(UserError, match="compress does not prune or quantize it"):
            compress(tmp_path / "m", tmp_path / "q", quantize="int8")
    finally:
        shutil.move(moved_away, pretrained / "gpt2")


def test_t5_lora_changes_only_adapters_and_learns(pretrained, table, tmp_path, monkeypatch, offline, pinned_torch):
    from polymodal.predictor import MultimodalPredictor

    train, test = table.iloc[:48], table.iloc[48:]
    p, before = fit_recording(monkeypatch, train, settings(pretrained / "t5", "lora", epochs=12) | {"lr": 1e-2})
    head = p.engine.net.head
    moved = changed(head, before)
    assert any("lora_" in n for n in moved) and "proj.weight" in moved
    assert all("lora_" in n or n.startswith("proj.") for n in moved), sorted(moved)
    assert not any("encoder" in n for n, _ in head.model.named_parameters())  # T5's encoder is left out
    # The adapters learn: the loss falls (3.9 -> 1.7 measured) and the generated text starts to match (WER 0.66
    # measured; a random tiny T5 that learned nothing generates "a a a a a a", WER 1.0).
    losses = [h["train_loss"] for h in p.metrics_["history"]]
    assert losses[-1] < 0.7 * losses[0], losses
    pred = p.predict(test)
    wer = p.evaluate(test)["wer"]
    assert wer < 0.9, (wer, pred.tolist()[:4])
    p.save(tmp_path / "m")
    back = MultimodalPredictor.load(tmp_path / "m")
    assert back.predict(test).tolist() == pred.tolist()
    a = p.predict_text(test, beam_size=2, n_best=2)
    b = back.predict_text(test, beam_size=2, n_best=2)
    assert a["text_2"].tolist() == b["text_2"].tolist() and np.allclose(a["score_2"], b["score_2"])


def test_bart_finetune_trains_everything_and_round_trips(pretrained, table, tmp_path, monkeypatch, offline,
                                                         pinned_torch):  # fmt: skip
    from polymodal.predictor import MultimodalPredictor

    p, before = fit_recording(monkeypatch, table, settings(pretrained / "bart", "finetune", epochs=2))
    head = p.engine.net.head
    moved = changed(head, before)
    assert any(".self_attn." in n for n in moved) and any("encoder_attn" in n for n in moved) and "proj.weight" in moved
    pred = p.predict(table)
    p.save(tmp_path / "m")
    assert MultimodalPredictor.load(tmp_path / "m").predict(table).tolist() == pred.tolist()


def test_pretrained_settings_errors(pretrained, table, offline, one_torch_thread):
    from polymodal.predictor import MultimodalPredictor
    from polymodal.tasks.hf_decoder import HFVocabulary, live_columns

    small = table.head(24)
    bad = settings(pretrained / "gpt2", "frozen", epochs=1)
    bad["decoder"] = bad["decoder"] | {"name": "gru"}
    with pytest.raises(UserError, match="replaces decoder.name 'gru'"):
        MultimodalPredictor(label="words", **bad).fit(small)
    long = settings(pretrained / "gpt2", "frozen", epochs=1)
    long["decoder"] = long["decoder"] | {"max_length": 20}
    with pytest.raises(UserError, match="more than the 16 positions"):
        MultimodalPredictor(label="words", **long).fit(small)
    missing = settings(pretrained / "nowhere", "frozen", epochs=1)
    with pytest.raises(UserError, match="no tokenizer found"):
        MultimodalPredictor(label="words", **missing).fit(small)
    # Ids: polymodal's four specials, then the tokenizer's; an unknown word is <unk>, dead columns leave the loss.
    v = HFVocabulary(str(pretrained / "gpt2"))
    assert len(v) == 4 + len(WORDS) and v.encode("A red zebra") == [4 + 4, 4 + 5, 3]
    assert v.decode([8, 9, 2, 10]) == "a red" and set(v.dead) == {0, 1, 3, 4, 5, 6, 7}
    logits, target = live_columns(torch.zeros(1, 2, len(v)), torch.tensor([[9, 0]]), v.dead)
    assert logits.shape[-1] == len(v) - len(v.dead) and target.tolist() == [[2, -100]]  # live: <eos>, then ids 8...
