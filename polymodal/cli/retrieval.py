"""polymodal align / index / search / zero-shot: cross-modal retrieval with an aligned model, or CLIP/SigLIP."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from polymodal.cli.base import _fail, _modalities, _run, _set_options, _settings, console
from polymodal.cli.options import (
    AcceleratorTerse,
    AudioCols,
    AudioEncoder,
    BatchSizeAlign,
    CacheDir,
    ConfigOpt,
    EmbedDimAlign,
    Finetune,
    ImageCols,
    ImageEncoder,
    ImageSize,
    LabelAlign,
    LrTerse,
    MaxEpochsTerse,
    ModelOutput,
    OnBadRows,
    PatienceAlign,
    Preset,
    SampleRate,
    Seed,
    SetOpt,
    TextCols,
    TextEncoder,
    ValidAlign,
)


def _retrieval_errors(fn: Callable[[], Any]) -> Any:
    """As `_run`, plus the retrieval errors a user can fix (an index from another model, a bad query)."""
    from polymodal.retrieval.index import IndexMismatch

    def go():
        try:
            return fn()
        except IndexMismatch as e:
            _fail(str(e))

    return _run(go)


def _retrieval_table(metrics: dict, title: str):
    from rich.table import Table

    t = Table(title=title)
    for c in ("direction", "level", "recall@1", "recall@5", "recall@10", "mAP", "MRR", "queries"):
        t.add_column(c)
    for direction, levels in metrics.items():
        if not isinstance(levels, dict) or "instance" not in levels:
            continue
        for level, m in levels.items():
            t.add_row(direction, level, *(f"{m[k]:.3f}" for k in ("recall@1", "recall@5", "recall@10", "mAP", "MRR")),
                      str(m["queries"]))  # fmt: skip
    return t


def align(
    train: Annotated[Path, typer.Argument(help="Training table: each row pairs the query and target columns")],
    output: ModelOutput,
    query: list[str] | None = typer.Option(
        None, "--query", "-q", help="Column to align with the target (repeatable; align.query)"
    ),
    target: str | None = typer.Option(None, "--target", "-t", help="The anchor column (align.target)"),
    label: LabelAlign = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    valid: ValidAlign = None,
    text: TextCols = None,
    image: ImageCols = None,
    audio: AudioCols = None,
    max_epochs: MaxEpochsTerse = None,
    batch_size: BatchSizeAlign = None,
    lr: LrTerse = None,
    patience: PatienceAlign = None,
    seed: Seed = None,
    embed_dim: EmbedDimAlign = None,
    dim: int | None = typer.Option(None, help="Size of the shared space [64]"),
    temperature: float | None = typer.Option(None, help="Initial temperature (learned) [0.07]"),
    image_size: ImageSize = None,
    sample_rate: SampleRate = None,
    on_bad_rows: OnBadRows = None,
    accelerator: AcceleratorTerse = None,
    text_encoder: TextEncoder = None,
    image_encoder: ImageEncoder = None,
    audio_encoder: AudioEncoder = None,
    preset: Preset = None,
    finetune: Finetune = None,
    cache_dir: CacheDir = None,
) -> None:
    """Align columns of a table in one embedding space (contrastive, CLIP-style) and save the model.

    The settings are the config tree's (`polymodal config`; the align section names the columns): give a YAML file
    with --config, then flags and --set PATH=VALUE override it."""
    from polymodal.retrieval.retriever import MultimodalRetriever

    def go():
        settings = _settings(
            label=label, modalities=_modalities(text=text, image=image, audio=audio), max_epochs=max_epochs,
            batch_size=batch_size, lr=lr, patience=patience, seed=seed, embed_dim=embed_dim, dim=dim,
            temperature=temperature, on_bad_rows=on_bad_rows, accelerator=accelerator, text_encoder=text_encoder,
            image_encoder=image_encoder, audio_encoder=audio_encoder, preset=preset, cache_dir=cache_dir,
            freeze=None if finetune is None else not finetune,
            **{"preprocess.image_size": image_size, "preprocess.sample_rate": sample_rate},
        ) | _set_options(set_)  # fmt: skip
        r = MultimodalRetriever(query=query or None, target=target, config=config, **settings)
        r.fit(train, valid)
        folder = r.save(output)
        console.print(_retrieval_table(r.metrics_["valid"], "validation retrieval"))
        console.print(f"saved aligned model to {folder}")

    _run(go)


def index_cmd(
    source: Path = typer.Argument(..., help="Aligned model folder (to build) or an index folder (with --add/--remove)"),
    gallery: Path | None = typer.Argument(None, help="Gallery table to index (when building)"),
    column: str | None = typer.Option(None, help="The gallery column to index (when building)"),
    output: Path | None = typer.Option(None, "--output", "-o", help="Index folder to write (default: MODEL/index)"),
    kind: str | None = typer.Option(None, "--index", help="flat | hnsw | ivf (default: by size; flat below 50k)"),
    id_column: str | None = typer.Option(None, help="Integer row ids from this column (default: row numbers)"),
    add: list[Path] | None = typer.Option(None, "--add", help="Add this table's rows to an existing index"),
    remove: list[int] | None = typer.Option(None, "--remove", help="Remove these row ids from an existing index"),
    cache_dir: CacheDir = None,
) -> None:
    """Build a FAISS index of a gallery column with an aligned model, or change one (--add / --remove)."""
    from polymodal.retrieval.search import Searcher

    def go():
        if add or remove:
            if gallery is not None:
                _fail("--add/--remove change an existing index: give the index folder only, no gallery table")
            s = Searcher.open(source, cache_dir=cache_dir)
            n_removed = s.remove(remove) if remove else 0
            n_added = sum(s.add(t, id_column) for t in add or [])
            folder = s.save(output or source)
            console.print(f"{folder}: added {n_added}, removed {n_removed}; {len(s.index)} rows ({s.index.kind})")
            return
        if gallery is None or column is None:
            _fail("to build an index give the model, the gallery table and --column: "
                  "polymodal index MODEL gallery.csv --column image -o MODEL/index")  # fmt: skip
        s = Searcher.build(source, gallery, column, output or source / "index", kind=kind, id_column=id_column,
                           cache_dir=cache_dir)  # fmt: skip
        console.print(f"indexed {len(s.index)} rows of {column!r} ({s.index.kind}) in {s.folder}")

    _retrieval_errors(go)


def search(
    index: Path = typer.Argument(..., help="Index folder (from `polymodal index`)"),
    audio: Path | None = typer.Option(None, "--audio", help="Query with this audio file"),
    image: Path | None = typer.Option(None, "--image", help="Query with this image file"),
    text: str | None = typer.Option(None, "--text", help="Query with this text"),
    k: int = typer.Option(10, "--k", "-k", help="How many results"),
    where: str | None = typer.Option(None, help="Filter on the gallery's other columns, e.g. \"speaker == 'jackson'\""),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as JSON"),
    cache_dir: CacheDir = None,
) -> None:
    """The k gallery rows nearest to a query (audio, image or text), optionally filtered on metadata."""
    from rich.table import Table

    from polymodal.retrieval.search import Searcher

    def go():
        given = [(m, v) for m, v in (("audio", audio), ("image", image), ("text", text)) if v is not None]
        if len(given) != 1:
            _fail("give exactly one query: --audio FILE, --image FILE or --text TEXT")
        modality, value = given[0]
        if modality != "text" and not Path(value).is_file():
            _fail(f"--{modality} {value}: no such file")
        s = Searcher.open(index, cache_dir=cache_dir)
        hits = s.search(modality, str(value), k=k, where=where)
        if as_json:
            sys.stdout.write(json.dumps(hits, indent=2, default=str) + "\n")
            return
        t = Table(title=f"{len(hits)} nearest {s.index.settings['column']!r} rows to the {modality} query")
        cols = ["rank", "id", "score", *[c for c in s.index.metadata.columns if c not in ("id", "_source")]]
        for c in cols:
            t.add_column(c)
        for i, h in enumerate(hits, 1):
            t.add_row(str(i), str(h["id"]), f"{h['score']:.4f}", *(str(h.get(c, "")) for c in cols[3:]))
        console.print(t)

    _retrieval_errors(go)


def zero_shot_cmd(
    table: Path = typer.Argument(..., help="Table with an image column"),
    image: str = typer.Option(..., "--image", help="The image column"),
    classes: str = typer.Option(..., help="Comma-separated class names, e.g. 'cat,dog'"),
    template: str = typer.Option("a photo of a {}", help="Text for each class; {} is the class name"),
    model: str = typer.Option("openai/clip-vit-base-patch32", help="CLIP or SigLIP: hub id or local folder"),
    output: Path | None = typer.Option(None, "--output", "-o", help="CSV to write (default: print)"),
) -> None:
    """Classify images into named classes with a pretrained CLIP/SigLIP, without training."""

    from polymodal.retrieval.zeroshot import zero_shot

    def go():
        from polymodal.files import atomic_path

        out = zero_shot(table, image, classes, template, model)
        if output is None:
            console.print(out.to_string(index=False))
            return
        output.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(output) as tmp:
            out.to_csv(tmp, index=False)
        console.print(f"wrote {len(out)} rows to {output}")

    _run(go)
