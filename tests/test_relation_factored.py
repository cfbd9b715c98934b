"""The relation network's first layer of g is computed per object and per question and summed per pair
(`RelationFusion`); this checks it against the paper's naive form, g applied to the concatenation
(o_i, o_j, q) of every pair, on random inputs with padding and absent rows."""

from __future__ import annotations

import torch

from polymodal.encoders.tokens import Tokens, grid_coords
from polymodal.fusion.relation import RelationFusion


def naive_relation(f: RelationFusion, tokens: dict[str, Tokens], present: torch.Tensor) -> torch.Tensor:
    """Santoro et al. as written: for every pair (i, j) of real objects, g(W [o_i, o_j, q] + b); sum; f."""
    masks = f.input_masks(tokens, present)
    t = tokens["image"]
    b, n, _ = t.tokens.shape
    o = torch.cat([f.obj["image"](t.tokens), t.coords.expand(b, -1, -1)], dim=-1)
    o = f.masked(o, masks["image"])
    q = f.q_norm(f.condition(tokens, present, ["question"]))
    # One linear layer over the concatenation, with the weights of the factored one.
    weight = torch.cat([f.g_left.weight, f.g_right.weight, f.g_question.weight], dim=1)
    out = torch.zeros(b, f.hidden)
    for r in range(b):
        for i in range(n):
            for j in range(n):
                if not (masks["image"][r, i] and masks["image"][r, j]):
                    continue
                x = torch.cat([o[r, i], o[r, j], q[r]])
                out[r] += f.g(weight @ x + f.g_left.bias)
    return f.f(out)


def test_factored_relation_equals_the_naive_one():
    torch.manual_seed(0)
    dims = {"image": 12, "question": 10}
    f = RelationFusion(dims, n_outputs=3, hidden=16, dropout=0.0).eval()
    b, h, w = 4, 3, 3
    mask = torch.ones(b, h * w, dtype=torch.bool)
    mask[1, 5:] = False  # padding never counts
    image = Tokens(torch.randn(b, h * w, 12), mask, torch.randn(b, 12), grid_coords(h, w), (h, w))
    question = Tokens(torch.randn(b, 1, 10), torch.ones(b, 1, dtype=torch.bool), torch.randn(b, 10))
    present = torch.tensor([[True, True], [True, True], [False, True], [True, False]])  # row 2: no picture
    tokens = {"image": image, "question": question}
    with torch.no_grad():
        fast, slow = f(tokens, present), naive_relation(f, tokens, present)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()
    # and the padded tokens really are ignored: changing them changes nothing
    image.tokens[1, 5:] = 1e3
    with torch.no_grad():
        assert torch.allclose(f(tokens, present), fast, atol=1e-5)
