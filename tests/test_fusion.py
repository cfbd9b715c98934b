"""The fusion contract: dict of embeddings + presence mask in, one tensor out; absent inputs are never read."""

import pytest
import torch

from polymodal.encoders.tokens import single_token
from polymodal.fusion import FUSIONS, build_fusion

DIMS = {"a": 8, "b": 6, "c": 4}


def call(f, emb, present):
    """A token-level fusion gets each embedding as one token (its own tests are in test_token_fusion.py)."""
    return f({k: single_token(v) for k, v in emb.items()}, present) if f.consumes_tokens else f(emb, present)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_output_shape(name):
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
