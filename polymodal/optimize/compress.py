"""Compress a model folder: magnitude pruning (global unstructured, or structured: whole conv channels and hidden
units removed, so the layers really shrink), a short fine-tune to recover, and int8 weights.

The result is an ordinary model folder (it loads, predicts, evaluates, serves) whose config.json records how it
was made ("compression") and the shrunken layer sizes ("input_specs": `widths` of the conv encoders, `hidden` of
the tabular MLPs), so `MultimodalPredictor.load` rebuilds the smaller network. The source folder is never touched;
the output is written atomically.

int8 in a PyTorch folder: every Linear, Conv2d, GRU and Embedding weight is stored as int8 with one float scale per
output row (symmetric), as plain safetensors tensors (`<key>:int8`, `<key>:scale`), never pickled quantized
modules. On load the weights are rebuilt, and Linear and GRU layers run int8 through PyTorch's dynamic
quantization. Convolutions run with their int8-rounded weights in float; their int8 execution with activation
scales calibrated on training rows (static quantization) is the ONNX path: `polymodal export --quantize static`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from polymodal.errors import UserError
from polymodal.model.quantized import int8_keys, int8_state

QUANTIZE = ("int8",)


class CompressError(UserError):
    pass


def check_args(
    model_dir: Path, output: Path, prune: float | None, quantize: str | None, finetune_epochs: int, calibration: Any
) -> None:
    """Every refusal before any work: nothing is read beyond config.json, nothing is written."""
    from polymodal.model.artifact import CONFIG, WEIGHTS

    if not (model_dir / CONFIG).is_file() or not (model_dir / WEIGHTS).is_file():
        raise CompressError(f"{model_dir} is not a polymodal model folder (no {CONFIG} / {WEIGHTS} in it)")
    if output.resolve() == model_dir.resolve():
        raise CompressError("the output folder must differ from the source folder (the source is never changed)")
    if prune is not None and not 0.0 < prune < 1.0:
        raise CompressError(f"--prune must be a fraction strictly between 0 and 1 (e.g. 0.5), not {prune}")
    if quantize is not None and quantize not in QUANTIZE:
        raise CompressError(f"--quantize must be one of {list(QUANTIZE)}, not {quantize!r}")
    if prune is None and quantize is None:
        raise CompressError("nothing to do: give --prune RATIO and/or --quantize int8")
    if finetune_epochs < 0:
        raise CompressError(f"--finetune-epochs must be >= 0, not {finetune_epochs}")
    if prune is not None and finetune_epochs > 0 and calibration is None:
        raise CompressError(
            "pruning fine-tunes to recover and needs training rows: give --calibration TABLE (the training table), "
            "or --finetune-epochs 0 to prune without recovery"
        )


# ---- pruning ------------------------------------------------------------------------------------------------
def prunable(net: Any) -> list[tuple[Any, str]]:
    """(module, parameter) pairs that magnitude pruning may zero: Linear, Conv2d and GRU weights."""
    from torch import nn

    pairs = []
    for m in net.modules():
        if isinstance(m, nn.Linear | nn.Conv2d):
            pairs.append((m, "weight"))
        elif isinstance(m, nn.GRU):
            pairs += [(m, p) for p, _ in list(m.named_parameters()) if p.startswith("weight")]
    return pairs


def prune_unstructured(net: Any, ratio: float) -> list[tuple[Any, str]]:
    """Global magnitude pruning: the `ratio` smallest weights of all prunable layers together become zero.
    The masks stay attached (so a fine-tune keeps them at zero) until `make_permanent`."""
    from torch.nn.utils import prune

    pairs = prunable(net)
    prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=ratio)
    return pairs


def make_permanent(pairs: list[tuple[Any, str]]) -> None:
    from torch.nn.utils import prune

    for m, name in pairs:
        prune.remove(m, name)


def _keep(scores: Any, ratio: float) -> Any:
    """Indices (sorted) of the units to keep: the largest (1 - ratio) of `scores`, at least one."""
    import torch

    k = max(1, int(round(len(scores) * (1.0 - ratio))))
    return torch.sort(torch.topk(scores, k).indices).values


def _conv_scores(block: Any) -> Any:
    """A conv channel's importance: L1 norm of its filter times its BatchNorm scale (the filter's real gain)."""
    conv, bn = block[0], block[1]
    gain = bn.weight.detach().abs() / (bn.running_var + bn.eps).sqrt()
    return conv.weight.detach().abs().sum(dim=(1, 2, 3)) * gain


def _copy_block(new: Any, old: Any, keep_out: Any, keep_in: Any) -> None:
    """Copy a conv block's kept filters (out) over its kept input channels (in), and their BatchNorm."""
    new[0].weight.copy_(old[0].weight[keep_out][:, keep_in])
    for attr in ("weight", "bias", "running_mean", "running_var"):
        getattr(new[1], attr).copy_(getattr(old[1], attr)[keep_out])
    new[1].num_batches_tracked.copy_(old[1].num_batches_tracked)


def _conv_blocks(features: Any) -> list[Any]:
    from torch import nn

    return [m for m in features if isinstance(m, nn.Sequential) and isinstance(m[0], nn.Conv2d)]


def shrink_encoder(enc: Any, spec: dict[str, Any], ratio: float, dim: int) -> tuple[Any, dict[str, Any]]:
    """A smaller copy of a scratch encoder (conv channels / hidden units removed) and its new spec; encoders
    with nothing to shrink come back as they are."""
    import torch

    from polymodal.encoders.scratch import AudioCNN, CategoricalMLP, ImageCNN, NumericMLP

    spec = dict(spec)
    with torch.no_grad():
        if isinstance(enc, ImageCNN | AudioCNN):
            blocks = _conv_blocks(enc.features)
            keeps = [_keep(_conv_scores(b), ratio) for b in blocks]
            spec["widths"] = [len(k) for k in keeps]
            new = type(enc)(**spec, dim=dim)
            prev = torch.arange(blocks[0][0].in_channels)
            for nb, ob, k in zip(_conv_blocks(new.features), blocks, keeps, strict=True):
                _copy_block(nb, ob, k, prev)
                prev = k
            if isinstance(enc, ImageCNN):  # flatten order (channel, cell): each kept channel keeps its grid cells
                cells = enc.proj[1].in_features // blocks[-1][0].out_channels
                cols = (prev[:, None] * cells + torch.arange(cells)[None]).flatten()
                new.proj[1].weight.copy_(enc.proj[1].weight[:, cols])
                new.proj[1].bias.copy_(enc.proj[1].bias)
            else:  # GRU input order (channel, mel band)
                bands = enc.rnn.input_size // blocks[-1][0].out_channels
                cols = (prev[:, None] * bands + torch.arange(bands)[None]).flatten()
                for name, p in enc.rnn.named_parameters():
                    getattr(new.rnn, name).copy_(p[:, cols] if name.startswith("weight_ih") else p)
                new.proj.load_state_dict(enc.proj.state_dict())
            return new, spec
        if isinstance(enc, NumericMLP | CategoricalMLP):
            mlp = enc.net if isinstance(enc, CategoricalMLP) else enc
            first, second = mlp.net[0], mlp.net[3]
            keep = _keep(first.weight.detach().abs().sum(dim=1) * second.weight.detach().abs().sum(dim=0), ratio)
            spec["hidden"] = len(keep)
            new = type(enc)(**spec, dim=dim)
            new_mlp = new.net if isinstance(new, CategoricalMLP) else new
            if isinstance(enc, CategoricalMLP):
                new.embeds.load_state_dict(enc.embeds.state_dict())
            new_mlp.net[0].weight.copy_(first.weight[keep])
            new_mlp.net[0].bias.copy_(first.bias[keep])
            new_mlp.net[3].weight.copy_(second.weight[:, keep])
            new_mlp.net[3].bias.copy_(second.bias)
            return new, spec
    return enc, spec


def prune_structured(net: Any, specs: dict[str, dict[str, Any]], ratio: float) -> dict[str, dict]:
    """Shrink every scratch conv encoder (channels) and tabular MLP (hidden units) by `ratio`, in place of the
    old modules; each keeps its output size. Returns the new input specs."""
    specs = {k: dict(v) for k, v in specs.items()}
    for name in net.input_names:
        key = net.keys[name]
        if "in_dim" in specs[name] or "pretrained" in specs[name]:
            continue  # frozen projections and pretrained backbones are left whole
        net.encoders[key], specs[name] = shrink_encoder(net.encoders[key], specs[name], ratio, net.encoders[key].dim)
    return specs


# ---- fine-tuning --------------------------------------------------------------------------------------------
def finetune(net: Any, task: Any, features: Any, targets: np.ndarray, epochs: int, batch_size: int, lr: float) -> list:
    """A few epochs of Adam on the training rows to recover from pruning (pruning masks, when attached, keep the
    pruned weights at zero). Returns the mean loss of each epoch."""
    import torch

    from polymodal.model.batch import Collate

    collate = Collate(features, targets)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    rng = np.random.default_rng(0)
    losses = []
    net.train()
    for _ in range(epochs):
        order, total = rng.permutation(len(features)), 0.0
        for start in range(0, len(order), batch_size):
            batch = collate(list(order[start : start + batch_size]))
            loss = task.loss(net(batch["inputs"], batch["present"]), batch["target"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(batch["present"])
        losses.append(total / len(order))
    return losses


def count(net: Any) -> dict[str, int]:
    params = [p for p in net.parameters()]
    return {"parameters": sum(p.numel() for p in params), "nonzero": sum(int((p != 0).sum()) for p in params)}


# ---- the verb -----------------------------------------------------------------------------------------------
def compress(
    model_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    prune: float | None = None,
    structured: bool = False,
    quantize: str | None = None,
    calibration: Any = None,
    finetune_epochs: int = 3,
) -> dict[str, Any]:
    """Compress `model_dir` into `output` (a new model folder). `calibration`: the training table (path or
    DataFrame) for the recovery fine-tune. Returns what was done (also saved as config.json's "compression")."""
    import torch

    from polymodal.data.io import read_table
    from polymodal.data.validate import check_columns
    from polymodal.model.artifact import save_folder
    from polymodal.predictor import MultimodalPredictor

    model_dir, output = Path(model_dir), Path(output)
    check_args(model_dir, output, prune, quantize, finetune_epochs, calibration)
    p = MultimodalPredictor.load(model_dir)
    engine = p.engine
    if hasattr(getattr(engine.net, "head", None), "save_files"):  # polymodal/tasks/hf_decoder.py
        # int8 breaks the HF layers that read their weight's dtype, pruning breaks tied embeddings: not done yet.
        raise CompressError(f"{model_dir} has a pretrained Hugging Face decoder (decoder.pretrained): compress does "
                            "not prune or quantize it; use the model folder as it is")  # fmt: skip
    table = None
    if calibration is not None:
        table = read_table(calibration)
        check_columns(table[0], engine.schema, training=True)  # names the missing columns; nothing written yet
    torch.manual_seed(p.train_config.seed)
    net = engine.net
    config = p.config()
    specs = dict(config["input_specs"])
    before = count(net)
    record: dict[str, Any] = {
        "source": str(model_dir.resolve()),
        "prune": prune,
        "structured": bool(structured and prune),
        "quantize": quantize,
        "finetune_epochs": finetune_epochs if prune else 0,
        "calibration": str(calibration) if isinstance(calibration, str | os.PathLike) else None,
        "before": before,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    start = time.perf_counter()
    if prune:
        pairs = []
        if structured:
            specs = prune_structured(net, specs, prune)
        else:
            pairs = prune_unstructured(net, prune)
        if finetune_epochs > 0 and table is not None:
            df, media, frozen, _ = p._load_rows(calibration, engine.pipeline, training=True, table=table)
            features = engine.pipeline.features(df, media, frozen)
            targets = engine.task.encode_targets(df[engine.schema.label])
            record["finetune_loss"] = finetune(
                net, engine.task, features, targets, finetune_epochs, p.train_config.batch_size,
                lr=p.train_config.lr * 0.3,
            )  # fmt: skip
            record["calibration_rows"] = len(df)
        make_permanent(pairs)
    net.eval()
    record["after"] = count(net)
    state = net.state_dict()
    if quantize == "int8":
        state = int8_state(state, int8_keys(net))
    record["seconds"] = round(time.perf_counter() - start, 3)
    config["input_specs"] = specs
    config["compression"] = record
    metrics = {"source": p.metrics_}
    save_folder(output, config, state, engine.preprocessor.to_dict(), metrics)
    return record
