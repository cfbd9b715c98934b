"""`polymodal compare`: the fusion leaderboard on the user's own data.

Trains every unimodal baseline (the same model with the other inputs left out), every selected fusion and the
late ensembles of the unimodal models, over K seeds on the same splits; measures the task metric, macro-F1,
parameters, train seconds, inference ms/sample and peak memory, plus robustness to missing and noisy
modalities and each modality's contribution (see robustness.py). Writes a ranked leaderboard (CSV, JSON),
one model folder per entry and seed, and report.html.

Sharing work between entries: the tables are read, every image/audio file decoded and every frozen pretrained
encoder run (through the feature cache) once per compare; the preprocessing is fitted and applied once per seed
(it depends on that seed's training rows) and its arrays are shared by every entry of the seed, as are the noisy
test inputs. Scratch and fine-tuned encoders train end to end inside each model, so they have no output to share.

Resuming: each entry's result is written (atomically) after its model folder; a re-run with the same data and
settings skips every entry whose result is there, so an interrupted compare picks up where it stopped.

This module orchestrates `MultimodalPredictor`s, so like the facade it sits on top of the other layers.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polymodal.data.io import read_table
from polymodal.data.schema import Modality, infer_schema
from polymodal.errors import UserError
from polymodal.evaluation.robustness import check_noise_rows
from polymodal.model.artifact import read_json, write_json
from polymodal.studies.budget import Budget
from polymodal.studies.entries import ENSEMBLES, parse_fusions, plan_entries
from polymodal.studies.leaderboard import (
    LEADERBOARD,
    REPORT,
    RESULT,
    aggregate,
    finished_result,
    settings_hash,
    used_folders,
    verdict,
    write_csv,
)
from polymodal.studies.runs import Run, StreamRun
from polymodal.version import __version__

log = logging.getLogger("polymodal")


# ---- the compare --------------------------------------------------------------------------------------------
def compare(
    train: Any,
    label: str | None,
    output: str | os.PathLike[str],
    *,
    test: Any | None = None,
    valid: Any | None = None,
    fusions: str | list[str] = "all",
    seeds: int | list[int] = 3,
    noise_levels: int = 5,
    noise_rows: int | None = 1000,
    permutations: int = 3,
    test_fraction: float = 0.2,
    report: bool = True,
    time_limit: float | None = None,
    cv: str | None = None,
    log_fn: Callable[[str], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run the leaderboard; returns what leaderboard.json holds. `seeds`: how many (0, 1, ...), or which.
    `noise_rows`: the noise curves are measured on a fixed sample of at most this many test rows (None: all);
    a frozen encoder must embed every noisy copy again, so this bounds the noise test's cost on large tables.
    `options` go to every `MultimodalPredictor` (modalities, ignore, problem_type, preprocess, embed_dim,
    max_epochs, modality_dropout, ...). Entries finished before with the same data and settings are reused, so
    separate processes may run different seeds into one folder and a last call gathers them. `time_limit`:
    the whole compare's seconds, shared fairly across the entries' fits (see `polymodal.studies.budget`);
    entries cut short are marked in the leaderboard. `cv="groups"`: leave-groups-out cross-validation over
    `data.split_by` instead of seeds on one test split: each fold ("seed" k) tests on its held-out groups (one group
    a fold up to 10 groups, else 10 folds) and trains and validates on the others, validation groups apart too; the
    leaderboard's mean and spread are then over held-out groups."""
    from polymodal.data.stream import fingerprint, head, table_fingerprint
    from polymodal.predictor import MultimodalPredictor

    say = log_fn or log.info
    wall_start = time.perf_counter()
    seed_list = list(range(seeds)) if isinstance(seeds, int) else sorted(set(seeds))
    if not seed_list:
        raise UserError("seeds must be at least 1")
    check_noise_rows(noise_rows)  # before any work, not after the encoders ran
    if time_limit is not None and not time_limit > 0:
        raise UserError(f"the time limit must be a positive number of seconds, not {time_limit}")
    for key in ("label", "fusion", "seed"):
        if key in options:
            raise UserError(f"{key!r} is set by compare itself")
    options = {"progress": False} | options
    template = MultimodalPredictor(label=label, **options)
    label = template.label
    streamed = template.streams(train)
    split_by = template.config_.data.split_by
    if cv is not None:
        if cv != "groups":
            raise UserError(f"--cv {cv!r}: the one cross-validation is 'groups' (leave-groups-out over --split-by)")
        if not split_by:
            raise UserError("--cv groups needs --split-by COLUMN: the column of groups (e.g. speaker) to hold out")
        if test is not None:
            raise UserError("--cv groups holds out each fold's groups as its test rows; leave --test out")
        if streamed:
            raise UserError("--cv groups needs the table in memory (data.streaming off); a streamed compare holds "
                            "out one hashed test split")  # fmt: skip
    if template.config_.privacy.anonymize:  # before anything is read; the copies stay beside the output
        from polymodal.privacy import anonymize_tables

        folder = template.config_.privacy.output_dir or Path(output).parent / f"{Path(output).name}.anonymized"
        tables = anonymize_tables(template.config_, folder, say, train=train, valid=valid, test=test)
        train, valid, test = tables["train"], tables["valid"], tables["test"]
    options = {"config": template.config_.to_dict()}  # the whole tree, as JSON: what the settings hash covers
    selected = parse_fusions(fusions)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)

    # What a finished entry's result must match to be reused: the data and every setting that changes it.
    tables = {k: v for k, v in (("train", train), ("valid", valid), ("test", test)) if v is not None}
    if streamed:  # a pass over each table, chunk by chunk; the schema from the first rows, as a streamed fit does
        from polymodal.training.table import HEAD_ROWS

        fingerprints = {k: table_fingerprint(v, template.config_.data.chunk_rows) for k, v in tables.items()}
        first = head(train, HEAD_ROWS)
    else:
        read = {k: read_table(v) for k, v in tables.items()}  # once: the in-memory run decodes these
        fingerprints = {k: fingerprint(df) for k, (df, _) in read.items()}
        first = read["train"][0]
    data = template.config_.data
    modalities = {c: Modality(m) for c, m in data.modalities.items()}
    schema = infer_schema(first, label, modalities, data.left_out(), data.problem_type, data.empty_label)
    if schema.problem_type.is_multilabel and any(f in ENSEMBLES for f in selected):
        say("multilabel: the late ensembles (softmax averaging and stacking) are left out")
        selected = [f for f in selected if f not in ENSEMBLES]
    if schema.problem_type.is_text and "ensemble-stack" in selected:
        say("text: ensemble-stack is left out (ensemble-average decodes the unimodal models as a product of experts)")
        selected = [f for f in selected if f != "ensemble-stack"]
    entries = plan_entries(list(schema.inputs), selected, Modality.VIDEO in schema.inputs.values())
    folds = None
    if cv is not None:
        from polymodal.data.validate import check_split_column
        from polymodal.training.table import group_folds

        check_split_column(first, split_by, label, str(train))
        folds = group_folds(first[split_by])
        seed_list = list(range(len(folds)))
        each = "one group" if all(len(f) == 1 for f in folds) else "a set of groups"
        say(f"--cv groups: {len(folds)} folds over {split_by!r}, each holding out {each} (folds replace seeds)")
    base = {
        "version": __version__, "data": fingerprints, "schema": schema.to_dict(), "options": options,
        "test_fraction": test_fraction if test is None else None, "noise_levels": noise_levels,
        "permutations": permutations, "noise_rows": noise_rows, "folders": used_folders(template.config_),
    }  # fmt: skip
    if folds is not None:
        base |= {"cv": "groups", "folds": folds}

    args = (template, options, train, test, valid, output, test_fraction, noise_levels, permutations, noise_rows)
    run = StreamRun(*args, schema=schema) if streamed else Run(*args)
    if streamed:
        say(f"{train} is streamed: each entry is a streamed fit, scored on every test row; robustness on a sample "
            f"of {noise_rows} test rows")  # fmt: skip
    run.say = say
    if not streamed:
        run.read, run.schema, run.folds = read, schema, folds
    if time_limit is not None:
        fits = sum(e.kind != "ensemble" for e in entries) * len(seed_list)
        run.budget = Budget(time_limit, fits)
        say(f"time limit {time_limit:.0f} s for {fits} fits: about {time_limit / max(fits, 1):.0f} s each to start")
    results: list[dict] = []
    ran = skipped = 0
    total = len(entries) * len(seed_list)
    for seed in seed_list:
        done: dict[str, dict] = {}
        for entry in entries:
            members = [e for e in entries if e.kind == "unimodal"] if entry.kind == "ensemble" else []
            spec = {"entry": entry.name, "kind": entry.kind, "inputs": entry.inputs, "fusion": entry.fusion}
            if entry.settings:
                spec["settings_of_entry"] = entry.settings
            if members:  # an ensemble is stale once any of its members was trained again
                spec["members"] = {m.inputs[0]: done[m.name]["run_id"] for m in members}
            settings = settings_hash(base | spec | {"seed": seed})
            result = finished_result(run.folder(entry, seed), settings)
            if result is not None:
                result = result | {"resumed": True}
                if run.budget is not None and entry.kind != "ensemble":
                    run.budget.spent()
                skipped += 1
                say(f"[{len(results) + 1}/{total}] {entry.name} seed {seed}: finished before, skipped")
            else:
                result = spec | {"seed": seed, "settings": settings, "run_id": uuid.uuid4().hex}
                if folds is not None:
                    result["held_out"] = folds[seed]
                result |= run.run_entry(entry, seed, members, done)
                if run.budget is not None and entry.kind != "ensemble":
                    run.budget.spent()
                write_json(run.folder(entry, seed) / RESULT, result)  # last: it marks the entry as finished
                ran += 1
                m = result["robustness"]["metric"]
                score, secs = result["metrics"][m], result["seconds"]
                cut = (
                    f", cut short by the time limit in epoch {result['stopped_epoch']}"
                    if result.get("time_limited")
                    else ""
                )
                say(f"[{len(results) + 1}/{total}] {entry.name} seed {seed}: {m} {score:.4f} ({secs:.0f} s{cut or ''})")
            results.append(result)
            done[entry.name] = result

    wall = time.perf_counter() - wall_start
    # The whole compare's time, counting the entries an earlier (interrupted or parallel) run finished.
    wall_total = wall + sum(r["seconds"] for r in results if r.get("resumed"))
    metric, higher = results[0]["robustness"]["metric"], results[0]["robustness"]["higher_is_better"]
    path = output / f"{LEADERBOARD}.json"
    previous = read_json(path) if path.exists() else {}
    encoder_s = run.encoder_seconds or previous.get("encoder_pass_seconds")  # all resumed: keep the earlier one
    board = {
        "kind": "polymodal-compare",
        "polymodal_version": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "label": label,
        "problem_type": schema.problem_type.value,
        "inputs": {n: m.value for n, m in schema.inputs.items()},
        "task": run.task or previous.get("task"),
        "metric": metric,
        "higher_is_better": higher,
        "seeds": len(seed_list),
        "cv": cv,
        "folds": folds,
        "time_limit": time_limit,
        "noise_levels": noise_levels,
        "noise_rows": noise_rows,
        "entries_run": ran,
        "entries_skipped": skipped,
        "wall_seconds": round(wall, 2),
        "wall_seconds_total": round(wall_total, 2),
        "encoder_pass_seconds": None if encoder_s is None else round(encoder_s, 3),
        "wall_over_encoder_pass": None if not encoder_s else round(wall_total / encoder_s, 2),
        "feature_cache": run.feature_cache() or previous.get("feature_cache", {}),
        "streaming": streamed,
        "data": fingerprints,
        "options": options,
        "leaderboard": aggregate(results, entries, metric, higher),
        # A model that ignores its inputs, on the same test rows: what every entry must beat to have learned.
        "majority_class": run.majority or previous.get("majority_class"),
        "results": [{k: v for k, v in r.items() if k not in ("history", "resumed")} for r in results],
    }
    board["verdict"] = verdict(board)
    write_json(path, board)
    write_csv(output / f"{LEADERBOARD}.csv", board["leaderboard"])
    if report:
        from polymodal.evaluation.html import write_html
        from polymodal.studies.report import compare_report

        write_html(output / REPORT, compare_report(output))
    return board
