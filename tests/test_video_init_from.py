"""`encoders.init_from`: a fit's video branches start from the weights of an earlier fit's same inputs (a branch
pre-trained on its own target), frozen with `encoders.init_freeze`; the order-blind (mean) frames encoder takes the
per-frame CNN and skips the GRU; mistakes are named."""

from __future__ import annotations

import pytest
import torch
from test_video import FAST, write_table

from polymodal.errors import UserError


@pytest.fixture(scope="module")
def folders(tmp_path_factory, pinned_torch):
    from polymodal import MultimodalPredictor

    folder = tmp_path_factory.mktemp("init")
    df = write_table(folder, 32, 5)
    df["bright"] = ["b" if i % 2 else "d" for i in range(len(df))]  # a branch's own target (any label will do)
    df.to_csv(folder / "t.csv", index=False)
    opts = FAST | {"max_epochs": 1, "ignore": ["photo", "note", "x", "kind", "y"]}
    pre = MultimodalPredictor(label="bright", fusion="early", **opts).fit(folder / "t.csv")
    pre.save(folder / "pre")
    return folder, pre


def encoder_state(p, name: str) -> dict[str, torch.Tensor]:
    net = p.engine.net
    return {k: v.clone() for k, v in net.encoders[net.keys[name]].state_dict().items()}


def test_encoders_start_from_the_folder_and_stay_frozen(folders):
    from polymodal import MultimodalPredictor

    folder, pre = folders
    opts = FAST | {"max_epochs": 1, "ignore": ["photo", "note", "x", "kind", "bright"]}
    init = {"clip:frames": str(folder / "pre"), "clip:sound": str(folder / "pre")}
    p = MultimodalPredictor(label="y", fusion="early", **opts,
                            **{"encoders.init_from": init, "encoders.init_freeze": True})  # fmt: skip
    p.fit(folder / "t.csv")
    for name in init:  # trained one epoch, yet the same weights: frozen, and started from the folder's
        got, want = encoder_state(p, name), encoder_state(pre, name)
        assert all(torch.equal(got[k], want[k]) for k in want if "running" not in k and "num_batches" not in k)
    assert len(p.predict(folder / "t.csv")) == 32


def test_order_blind_frames_take_the_cnn_only(folders):
    from polymodal import MultimodalPredictor
    from polymodal.model.folder import build_net

    folder, pre = folders
    settings = {"encoders.video.temporal": "mean", "encoders.init_from": {"clip:frames": str(folder / "pre")}}
    p = MultimodalPredictor(label="y", **FAST, **settings)
    specs = pre.engine.pipeline.preprocessor.input_specs()
    net = build_net(p.config_, pre.schema, specs, pre.engine.task, init=True)
    got, want = net.encoders[net.keys["clip:frames"]].state_dict(), encoder_state(pre, "clip:frames")
    assert not any(k.startswith("rnn.") for k in got)
    assert all(torch.equal(got[k], want[k]) for k in got)  # every tensor of the mean encoder came from the folder


def test_mistakes_are_named(folders):
    from polymodal import MultimodalPredictor

    folder, _ = folders
    opts = FAST | {"max_epochs": 1, "ignore": ["photo", "note", "x", "kind", "bright"]}
    for init, words in [
        ({"clip:pictures": str(folder / "pre")}, "none of which this model has"),
        ({"clip:frames": str(folder / "nowhere")}, "not a fitted model folder"),
    ]:
        with pytest.raises(UserError, match=words):
            MultimodalPredictor(label="y", **opts, **{"encoders.init_from": init}).fit(folder / "t.csv")
    other = opts | {"embed_dim": 8}
    with pytest.raises(UserError, match="do not fit this encoder"):
        init = {"encoders.init_from": {"clip:frames": str(folder / "pre")}}
        MultimodalPredictor(label="y", **other, **init).fit(folder / "t.csv")


def test_compare_entries_start_only_their_own_inputs(folders, tmp_path):
    """init_from naming the frames alone: the frames entries start from it, the sound-only entry starts fresh
    (naming none of its inputs is no mistake there)."""
    import polymodal

    folder, pre = folders
    opts = FAST | {"max_epochs": 1, "ignore": ["photo", "note", "x", "kind", "bright"]}
    settings = {"encoders.init_from": {"clip:frames": str(folder / "pre")}, "encoders.init_freeze": True}
    board = polymodal.compare(folder / "t.csv", "y", tmp_path / "cmp", fusions="early", seeds=1, noise_levels=0,
                              permutations=1, report=False, **opts, **settings)  # fmt: skip
    entries = {r["entry"] for r in board["results"]}
    assert {"clip:frames only", "clip:sound only", "early"} <= entries, entries
