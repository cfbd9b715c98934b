"""polymodal compress / export: a model rewritten smaller (pruned, int8) or into one ONNX graph."""

from __future__ import annotations

from pathlib import Path

import typer

from polymodal.cli.base import _run, console
from polymodal.cli.options import ModelFolder


def compress(
    model: Path = typer.Argument(..., help="Model folder (left unchanged)"),
    output: Path = typer.Option(..., "--output", "-o", help="The compressed model folder to write"),
    prune: float | None = typer.Option(None, help="Fraction of weights (or with --structured: of channels) to remove"),
    structured: bool = typer.Option(False, help="Remove whole conv channels and hidden units (the layers shrink)"),
    quantize: str | None = typer.Option(None, help="int8: weights stored as int8; Linear/GRU run int8"),
    calibration: Path | None = typer.Option(None, "--calibration", "--train", help="Training table (fine-tune)"),
    finetune_epochs: int = typer.Option(3, help="Epochs of fine-tuning after pruning, on --calibration"),
) -> None:
    """Prune and/or quantize a model into a new, ordinary model folder that records how it was made."""
    from polymodal.optimize.compress import compress as run

    def go():
        r = run(model, output, prune, structured, quantize, calibration, finetune_epochs)
        b, a = r["before"], r["after"]
        console.print(
            f"wrote {output}: parameters {b['parameters']:,} -> {a['parameters']:,}, "
            f"non-zero {b['nonzero']:,} -> {a['nonzero']:,}" + (f", weights {quantize}" if quantize else "")
        )

    _run(go)


def export(
    model: ModelFolder,
    output: Path = typer.Option(..., "--output", "-o", help="The .onnx file to write"),
    format: str = typer.Option("onnx", "--format", help="onnx"),
    quantize: str | None = typer.Option(None, help="dynamic | static: int8 with ONNX Runtime"),
    calibration: Path | None = typer.Option(None, help="Training table for --quantize static"),
) -> None:
    """Export a model to one ONNX graph (preprocessing inside); run it with --runtime onnx."""
    from polymodal.optimize.export import export_model

    def go():
        path = export_model(model, output, format, quantize, calibration)
        console.print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")

    _run(go)
