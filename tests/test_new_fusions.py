"""GMU, tensor, low-rank and cross-modal attention fusion, and late ensembles of unimodal models, trained on the
generated task where the label needs the image and the text together (each alone reaches at most 50 %)."""

import numpy as np
import pandas as pd
import pytest
import synth
import torch

from polymodal import MultimodalPredictor
from polymodal.fusion.ensemble import ProbabilityEnsemble
from polymodal.fusion.tensor import factor_size
from polymodal.studies.compare import compare
from polymodal.studies.ensemble import EnsembleModel, is_ensemble_folder
from polymodal.studies.entries import ENSEMBLES

NEW = ["gmu", "tensor", "low_rank", "cross_attention"]
IGNORE = ["clip", "price", "shade", "score"]
pytestmark = pytest.mark.usefixtures("pinned_torch")


@pytest.fixture(scope="module")
def board(synth_split, tmp_path_factory, pinned_torch):
    """One compare: both unimodal baselines, the four new fusions and the two ensembles, one seed."""
    train, test = synth_split
    out = tmp_path_factory.mktemp("cmp_new")
    b = compare(train, "y", out, test=test, fusions=NEW + list(ENSEMBLES), seeds=1, permutations=2, report=False,
                ignore=IGNORE, **synth.FAST)  # fmt: skip
    return out, b


def _load(folder):
    return EnsembleModel.load(folder) if is_ensemble_folder(folder) else MultimodalPredictor.load(folder).engine


def test_each_new_fusion_and_ensemble_beats_every_unimodal_baseline(board):
    _, b = board
    rows = {r["entry"]: r for r in b["leaderboard"]}
    assert set(rows) == {"image only", "caption only", *NEW, *ENSEMBLES}
    unimodal = [rows["image only"]["accuracy_mean"], rows["caption only"]["accuracy_mean"]]
    assert max(unimodal) < 0.65, unimodal
    for name in NEW + ["ensemble-stack"]:
        acc = rows[name]["accuracy_mean"]
        assert acc > 0.85 and acc > max(unimodal) + 0.25, (name, acc, unimodal)
        assert rows[name]["f1_macro_mean"] > 0.85
    # Averaging is right only when each member splits its probability evenly over the classes it cannot tell
    # apart; overconfident members tip it, so it gets a looser bound (stacking learns to correct for that).
    assert rows["ensemble-average"]["accuracy_mean"] > max(unimodal) + 0.15


@pytest.mark.parametrize("entry", NEW + list(ENSEMBLES))
def test_missing_cell_gives_the_prediction_of_the_model_told_it_is_absent(board, synth_split, entry):
    out, _ = board
    _, test = synth_split
    model = _load(out / "models" / entry / "seed0")
    df = pd.read_csv(test).head(20)
    holed = df.copy()
    holed.loc[:9, "caption"] = np.nan
    holed.loc[5:14, "image"] = np.nan  # rows 5..9 have nothing at all
    full, _ = model.features(df, test.parent)
    hide = np.ones_like(full.present)
    names = full.input_names
    hide[:10, names.index("caption")] = False
    hide[5:15, names.index("image")] = False
    told = model.outputs(full, present=hide)
    f_holed, _ = model.features(holed, test.parent)
    np.testing.assert_allclose(model.outputs(f_holed), told, atol=1e-6)
    clean = model.outputs(full)
    np.testing.assert_allclose(told[15:], clean[15:], atol=1e-6)  # rows with both inputs are untouched
    assert not np.allclose(told[:15], clean[:15], atol=1e-3)  # hiding an input does change predictions
    assert np.isfinite(told).all() and np.allclose(told.sum(axis=1), 1.0, atol=1e-5)


def test_robustness_on_the_generated_task(board):
    """Clean >= heaviest noise; noising or removing the text, which every fused model needs, costs accuracy."""
    _, b = board
    for r in b["results"]:
        rob = r["robustness"]
        assert rob["clean"] == pytest.approx(r["metrics"]["accuracy"])
        for name, curve in rob["noise"].items():
            scores = curve["scores"]
            assert len(scores) == 6 and scores[0] >= scores[-1] - 1e-9, (r["entry"], name, scores)
            assert 0 <= curve["relative_robustness"] <= 1.0 + 1e-9
        if r["kind"] != "unimodal":
            text = rob["noise"]["caption"]["scores"]
            assert text[-1] < text[0] - 0.1 and max(text[1:]) <= text[0] + 0.02, (r["entry"], text)
            assert rob["missing"]["caption"] < 0.65
            assert rob["ablation"]["caption"] == pytest.approx(rob["clean"] - rob["missing"]["caption"])
            assert rob["ablation"]["caption"] > (0.3 if r["entry"] in NEW else 0.15)
            assert rob["permutation"]["caption"] > 0.2 and rob["permutation"]["image"] > 0.2


def test_factor_size_keeps_the_tensor_small():
    for n in range(1, 7):
        d = factor_size(n, 4096)
        assert d >= 1 and (d + 1) ** n <= 4096 and (n > 3 or (d + 2) ** n > 4096 or d == 32)


def test_tensor_fusion_of_one_present_input_is_its_unimodal_part():
    """With b absent, the outer product [a, 1] x [0, 1] keeps exactly a's terms and the constant."""
    from polymodal.fusion.tensor import TensorFusion

    f = TensorFusion({"a": 5, "b": 3}, 2, hidden=8, max_product=64).eval()
    emb = {"a": torch.randn(4, 5), "b": torch.randn(4, 3)}
    present = torch.tensor([[1, 0]] * 4, dtype=torch.bool)
    za = torch.cat([f.proj["a"](emb["a"]), torch.ones(4, 1)], dim=1)
    zb = torch.cat([torch.zeros(4, f.factor), torch.ones(4, 1)], dim=1)
    expected = f.mlp((za[:, :, None] * zb[:, None, :]).flatten(1))
    torch.testing.assert_close(f(emb, present), expected)


def test_probability_ensemble_average_and_stack_use_only_present_members():
    p = {
        "a": torch.tensor([[0.8, 0.2], [0.6, 0.4], [0.5, 0.5]]),
        "b": torch.tensor([[0.2, 0.8], [0.0, 1.0], [0.9, 0.1]]),
    }
    present = torch.tensor([[1, 1], [1, 0], [0, 0]], dtype=torch.bool)
    avg = ProbabilityEnsemble({"a": 2, "b": 2}, 2, mode="average")
    out = torch.softmax(avg(p, present), dim=1)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.5], [0.6, 0.4], [0.5, 0.5]]))
    stack = ProbabilityEnsemble({"a": 2, "b": 2}, 2, mode="stack")
    stack.set_linear(np.arange(8).reshape(2, 4) / 4, np.array([0.1, -0.1]), np.array([[0.7, 0.3], [0.4, 0.6]]))
    garbage = dict(p, b=torch.full((3, 2), 1e3))
    torch.testing.assert_close(stack(garbage, present)[1:], stack(p, present)[1:])  # absent b is never read
    with pytest.raises(ValueError, match="every member must output 2 values"):
        ProbabilityEnsemble({"a": 2, "b": 3}, 2)
