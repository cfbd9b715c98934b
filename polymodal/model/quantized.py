"""int8 weights in a model folder, the part that saving and loading need (compressing lives in
`polymodal.optimize.compress`): every Linear, Conv2d, GRU and Embedding weight is stored as int8 with one float
scale per output row (symmetric), as plain safetensors tensors (`<key>:int8`, `<key>:scale`), never pickled
quantized modules. On load the weights are rebuilt, and Linear and GRU layers run int8 through PyTorch's dynamic
quantization."""

from __future__ import annotations

from typing import Any

INT8, SCALE = ":int8", ":scale"


# ---- int8 storage -------------------------------------------------------------------------------------------
def int8_state(state: dict[str, Any], keys: set[str]) -> dict[str, Any]:
    """Replace each weight in `keys` by int8 values and a per-row float32 scale (symmetric, 127 levels)."""
    import torch

    out = {}
    for k, w in state.items():
        if k not in keys or w.dim() < 2:
            out[k] = w
            continue
        flat = w.detach().float().reshape(w.shape[0], -1)
        scale = (flat.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
        q = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8).reshape(w.shape)
        out[k + INT8], out[k + SCALE] = q.contiguous(), scale.contiguous()
    return out


def restore_state(state: dict[str, Any]) -> dict[str, Any]:
    """The float weights of an int8 state (see `int8_state`); other tensors unchanged."""
    out = {}
    for k, v in state.items():
        if k.endswith(SCALE):
            continue
        if k.endswith(INT8):
            base = k[: -len(INT8)]
            scale = state[base + SCALE]
            out[base] = (v.float().reshape(v.shape[0], -1) * scale[:, None]).reshape(v.shape)
        else:
            out[k] = v
    return out


def quantize_modules(net: Any) -> Any:
    """Linear and GRU layers to int8 compute (PyTorch dynamic quantization: weights int8, activations
    quantized per batch on the fly), but those of transformer and attention modules."""
    import torch
    from torch import nn
    from torch.ao.quantization import quantize_dynamic

    torch.backends.quantized.engine = "x86" if "x86" in torch.backends.quantized.supported_engines else "qnnpack"
    # Layers inside PyTorch's transformer and attention modules stay float (rebuilt from their int8 weights): those
    # modules read `linear.weight` as a tensor (their fused fast path), which a dynamically quantized Linear
    # replaces by a method, so attention fusions and text decoders crashed at predict time.
    attention = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer, nn.MultiheadAttention)
    inside = [name + "." for name, m in net.named_modules() if isinstance(m, attention)]
    names = {name for name, m in net.named_modules()
             if isinstance(m, nn.Linear | nn.GRU) and not name.startswith(tuple(inside))}  # fmt: skip
    return quantize_dynamic(net, names, dtype=torch.qint8)


def int8_keys(net: Any) -> set[str]:
    from torch import nn

    keys = set()
    for name, m in net.named_modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.Embedding):
            keys.add(f"{name}.weight")
        elif isinstance(m, nn.GRU):
            keys |= {f"{name}.{p}" for p, _ in m.named_parameters() if p.startswith("weight")}
    return keys
