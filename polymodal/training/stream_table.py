"""A streamed training table (larger than memory), prepared in one pass: labels and every trained encoder's file
checked chunk by chunk, the preprocessing fitted, frozen encoders run into the feature cache, and the training and
validation rows described for the loaders that read them again, chunk by chunk, in training."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from polymodal.config import Config
from polymodal.data.io import table_name
from polymodal.data.stream import head, iter_chunks, table_dir, valid_mask
from polymodal.data.validate import BadRowsError, Problem, check_columns, check_files, check_labels
from polymodal.errors import UserError
from polymodal.training.data import StreamRows
from polymodal.training.table import DROPPED_REPORT, LabelValues, TrainTable, pick_groups

log = logging.getLogger("polymodal")


def prepare_streamed(cfg: Config, table: TrainTable, pipeline: Any, valid: Any | None) -> tuple[Any, Any, Any, list]:
    """Returns (task, training rows, validation rows, the problems found: raised instead under on_bad_rows=error).
    Without `valid`, the validation rows are a hashed `data.valid_fraction` of the training table."""
    from polymodal.tasks import Task

    if cfg.train.refit:  # a second pass over a table larger than memory: not offered
        log.warning("train.refit does not apply to a streamed table: the model kept is the one validation chose")
    train, schema, base = table.source, table.schema, table.base_dir
    preprocessor, label = pipeline.preprocessor, schema.label
    fitting = preprocessor.start_fit()
    labels = LabelValues(schema.problem_type)
    seen = {"train": 0, "valid": 0}
    problems: list[Problem] = []
    unreadable: set[int] = set()  # training rows whose files fail to decode
    split_by, groups = cfg.data.split_by if valid is None else None, frozenset()
    if split_by:  # a pass over the group column alone: which groups validate (`pick_groups`, as in memory)
        sizes = pd.concat([c[split_by].astype(str) for c in iter_chunks(train, cfg.data.chunk_rows, [split_by])])
        groups = frozenset(pick_groups(sizes.value_counts(), cfg.data.valid_fraction, cfg.train.seed))

    def scan(source: Any, part: str) -> None:
        src_dir = table_dir(source)
        for chunk in iter_chunks(source, cfg.data.chunk_rows):
            flat = chunk.reset_index(drop=True)
            # Labels, and every trained encoder's file (a stat: only a sample is decoded before training).
            bad = check_labels(flat, schema) + check_files(flat, schema, src_dir, skip=pipeline.frozen_inputs)
            problems.extend(Problem(int(chunk.index[p.row]), p.column, f"[valid] {p.reason}" if part == "valid"
                                    else p.reason) for p in bad)  # fmt: skip
            chunk = chunk.drop(index=list({chunk.index[p.row] for p in bad}))
            is_valid = (valid_mask(chunk, cfg.data.valid_fraction, cfg.train.seed, split_by, groups)
                        if valid is None else np.full(len(chunk), part == "valid"))  # fmt: skip
            seen["valid"] += int(is_valid.sum())
            if part == "valid":
                continue
            rows = chunk[~is_valid]
            seen["train"] += len(rows)
            labels.update(rows[label])
            media: dict[str, list] = {}
            if fitting.needs_media() or pipeline.frozen_inputs:  # the feature pass fills the cache once
                media, frozen, more = pipeline.decode(rows.reset_index(drop=True), src_dir,
                                                      media=fitting.needs_media())  # fmt: skip
                problems.extend(Problem(int(rows.index[p.row]), p.column, p.reason) for p in more)
                unreadable.update(int(rows.index[p.row]) for p in more)
                for name, (emb, _) in frozen.items():
                    preprocessor.state[name]["dim"] = int(emb.shape[1])
            fitting.update(rows, media)

    scan(train, "train")
    if valid is not None:
        check_columns(head(valid, 1000), schema, training=False)
        scan(valid, "valid")
    problems.sort(key=lambda p: (p.row, p.column))
    if problems and cfg.data.on_bad_rows == "error":
        raise BadRowsError(problems, table_name(train))
    skip = frozenset(p.row for p in problems if not p.reason.startswith("[valid]"))
    vskip = frozenset(p.row for p in problems if p.reason.startswith("[valid]") or valid is None)
    if seen["train"] == 0 or seen["valid"] == 0:
        raise UserError(f"streaming {table_name(train)} left {seen['train']} training and {seen['valid']} "
                        "validation rows; both need rows (a larger table, or data.valid_fraction)")  # fmt: skip
    if problems:
        log.warning("dropping %d bad row(s); see %s", len({p.row for p in problems}), DROPPED_REPORT)
    fitting.finish()
    task = Task.fit(schema.problem_type, labels.series(), cfg.decoder,
                    any(m.value == "audio" for m in schema.inputs.values()), schema.empty_label)  # fmt: skip
    common = dict(base_dir=base, pipeline=pipeline, task=task, label=label, chunk_rows=cfg.data.chunk_rows,
                  valid_fraction=cfg.data.valid_fraction, seed=cfg.train.seed, split_by=split_by, valid_groups=groups,
                  on_bad_rows=cfg.data.on_bad_rows)  # fmt: skip
    train_rows = StreamRows(train, part="train" if valid is None else "all", n_rows=seen["train"] - len(unreadable),
                            skip_rows=skip, **common)  # fmt: skip
    valid_rows = StreamRows(train if valid is None else valid, part="valid" if valid is None else "all",
                            n_rows=seen["valid"], skip_rows=vskip, **common)  # fmt: skip
    return task, train_rows, valid_rows, problems
