"""The fusion contract: dict of embeddings + presence mask in, one tensor out; absent inputs are never read."""

import pytest
import torch

from polymodal.encoders.tokens import single_token
from polymodal.fusion import FUSIONS, build_fusion

DIMS = {"a": 8, "b": 6, "c": 4}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def call(f, emb, present):
    """A token-level fusion gets each embedding as one token (its own tests are in test_token_fusion.py)."""
    return f({k: single_token(v) for k, v in emb.items()}, present) if f.consumes_tokens else f(emb, present)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_output_shape(name):
    torch.manual_seed(0)
    f = build_fusion(name, DIMS, n_outputs=3, hidden=16).eval()
    emb = {k: torch.randn(5, d) for k, d in DIMS.items()}
    out = call(f, emb, torch.ones(5, 3, dtype=torch.bool))
    assert out.shape == (5, f.out_dim)
    assert f.out_dim == (3 if f.produces_logits else out.shape[1])


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_absent_input_does_not_leak(name):
    torch.manual_seed(0)
    f = build_fusion(name, DIMS, n_outputs=3, hidden=16).eval()
    emb = {k: torch.randn(5, d) for k, d in DIMS.items()}
    present = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    out = call(f, emb, present)
    # Whatever sits in an absent slot (zeros, noise, huge values) must not change the output.
    for fill in (torch.zeros, lambda *s: 1e3 * torch.randn(*s)):
        other = {k: torch.where(present[:, i, None], v, fill(*v.shape)) for i, (k, v) in enumerate(emb.items())}
        torch.testing.assert_close(call(f, other, present), out)
    assert torch.isfinite(out).all()


def test_present_inputs_do_matter():
    torch.manual_seed(0)
    f = build_fusion("attention", DIMS, n_outputs=3, hidden=16).eval()
    emb = {k: torch.randn(2, d) for k, d in DIMS.items()}
    present = torch.ones(2, 3, dtype=torch.bool)
    changed = dict(emb, a=emb["a"] + 5)
    assert not torch.allclose(f(changed, present), f(emb, present))


def test_late_weights_renormalize_over_present_inputs():
    f = build_fusion("late", DIMS, n_outputs=2)
    w = f.input_weights(torch.tensor([[1, 0, 1], [0, 0, 0]], dtype=torch.bool))
    assert w[0, 1] == 0 and torch.isclose(w[0].sum(), torch.tensor(1.0)) and (w[1] == 0).all()


def test_unknown_fusion_lists_choices():
    choices = (
        r"\['attention', 'cross_attention', 'early', 'film', 'gmu', 'late', 'low_rank', 'relation', 'tensor', "
        r"'token_transformer'\]"
    )
    with pytest.raises(ValueError, match=rf"unknown fusion 'concat'; choose one of {choices}"):
        build_fusion("concat", DIMS, 2)


# Parameter names and shapes a saved model folder holds (hidden=16, DIMS): the constructors share builders
# (polymodal/fusion/blocks.py), and a change there must not rename what folders written earlier contain.
SAVED = {
    "attention": {"proj.a.weight": (16, 8), "type_embed": (3, 16), "cls": (1, 1, 16), "norm.weight": (16,),
                  "encoder.layers.1.self_attn.in_proj_weight": (48, 16), "encoder.layers.1.linear1.weight": (32, 16)},
    "cross_attention": {"proj.c.weight": (16, 4), "type_embed": (3, 16), "layers.0.kv.weight": (32, 16),
                        "empty": (16,), "norm.bias": (16,)},
    "token_transformer": {"proj.b.weight": (16, 6), "type_embed": (3, 16), "position.weight": (512, 16),
                          "coord.weight": (16, 2), "cls": (1, 1, 16), "cond_proj.a.weight": (16, 8),
                          "encoder.layers.0.norm1.weight": (16,)},
    "tensor": {"proj.a.weight": (15, 8), "proj.c.bias": (15,), "mlp.1.weight": (16, 4096)},
    "low_rank": {"proj.a.0.weight": (16, 8), "factors.b": (4, 17, 16), "rank_weights": (4,), "norm.weight": (16,)},
    "relation": {"obj.a.0.weight": (16, 8), "obj.a.1.weight": (16,), "g_left.weight": (16, 18)},
    "film": {"inp.a.weight": (16, 8), "cond_proj.c.weight": (16, 4), "blocks.2.conv1.weight": (16, 18, 1, 1)},
    "gmu": {"candidates.a.0.weight": (16, 8), "missing.b": (6,), "gate.weight": (48, 18)},
}  # fmt: skip
LAYERS = {"attention": 2, "cross_attention": 1, "token_transformer": 2}


@pytest.mark.parametrize("name", sorted(SAVED))
def test_saved_parameter_names_stay(name):
    sd = build_fusion(name, DIMS, n_outputs=3, hidden=16).state_dict()
    assert {k: tuple(sd[k].shape) for k in SAVED[name] if k in sd} == SAVED[name], sorted(sd)
    if name in LAYERS:  # one stack of the configured depth, no extra copy of the layers under another name
        stacks = {k.rsplit("layers.", 1)[0] for k in sd if "layers." in k}
        depth = {k.split("layers.", 1)[1].split(".")[0] for k in sd if "layers." in k}
        assert len(stacks) == 1 and depth == {str(i) for i in range(LAYERS[name])}, (stacks, depth)
