"""The transformer decoder's step carries the keys and values of the tokens so far (its cache grows by one token
a step): each step's logits equal those of the whole prefix run through `forward`, whatever the padding of the
memory, and the cache follows the hypotheses when beam search reorders them."""

from __future__ import annotations

import numpy as np
import torch

from polymodal.tasks.beam import beam_search
from polymodal.tasks.decoders import TransformerDecoder


def test_cached_steps_equal_the_whole_prefix(one_torch_thread):
    torch.manual_seed(0)
    d = TransformerDecoder(20, dim=32, layers=2, heads=4).eval()
    memory = torch.randn(3, 5, 32)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1, 3:] = False  # padding in row 1's memory
    kv, cache = d.step_memory(memory), d.init_cache(memory, mask)
    assert cache.shape == (3, 0, 2 * 2 * 32)
    prefix = torch.ones(3, 1, dtype=torch.long)
    with torch.no_grad():
        for t in range(8):
            logits, cache = d.step(prefix, kv, mask, cache)
            assert cache.shape[1] == t + 1
            torch.testing.assert_close(logits, d(memory, mask, prefix)[:, -1], atol=1e-5, rtol=1e-5)
            prefix = torch.cat([prefix, torch.randint(3, 20, (3, 1))], dim=1)


def test_beam_search_with_the_cache_equals_without(one_torch_thread):
    torch.manual_seed(1)
    d = TransformerDecoder(12, dim=16, layers=2, heads=2).eval()
    memory, mask = torch.randn(4, 6, 16), torch.ones(4, 6, dtype=torch.bool)
    k = 3

    def cached(prefix, cache, shared):
        logits, cache = d.step(torch.as_tensor(prefix), *shared, cache)
        return torch.log_softmax(logits, -1).numpy(), cache

    def whole(prefix, cache, shared):  # no cache: the prefix through forward each step
        return torch.log_softmax(d(shared[0], shared[1], torch.as_tensor(prefix))[:, -1], -1).numpy(), cache

    kw = dict(bos=1, eos=2, pad=0, max_len=7, beam_size=k, n_best=2)
    with torch.no_grad():
        mem_k, msk_k = memory.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
        a = beam_search(cached, d.init_cache(mem_k, msk_k), 4, shared=(d.step_memory(mem_k), msk_k), **kw)
        b = beam_search(whole, None, 4, shared=(mem_k, msk_k), **kw)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)
