"""The config reference, generated from the config tree itself: every dotted path with its type, default and help.

Paths and types come from the same public functions as `polymodal config --paths` (`Config.paths()`,
`leaf_type`), defaults from `Config().get(path)`. The help is the comment written beside (or above) each field in
the source, and a section's docstring introduces its table, so the reference cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import html
import inspect
import io
import json
import textwrap
import tokenize
from typing import Any

# Help for the settings whose field has no comment in the source yet (a comment there wins over this text).
FALLBACK_HELP = {
    "data.on_bad_rows": "rows with a missing or broken file, an empty label...: error stops with a list of them; "
    "skip drops them and writes dropped_rows.csv into the model folder",
    "privacy.anonymize": "anonymize the training tables before anything is fitted, logged or saved",
    "privacy.faces": "faces: blur (pixelate and blur), box (fill black) or keep",
    "privacy.voice": "voices: mcadams (McAdams-coefficient anonymization) or keep",
    "privacy.seed": "seeds the random choices (alpha per recording with alpha_range)",
    "preprocess.image_size": "side of the square an image is resized to, in pixels",
    "preprocess.sample_rate": "audio is resampled to this rate (Hz)",
    "preprocess.max_audio_seconds": "audio is padded or trimmed to the 95th percentile training length, at most this",
    "preprocess.n_mels": "mel bands of the audio features",
    "preprocess.n_mfcc": "MFCC coefficients of the audio features",
    "preprocess.max_text_tokens": "texts are cut to the 95th percentile training length in tokens, at most this",
    "preprocess.max_vocab": "the most frequent training words kept in a text column's vocabulary",
    "preprocess.min_token_count": "a word enters the vocabulary when it occurs at least this often in training",
    "preprocess.max_categories": "the most frequent categories kept per column; the others go to the unseen bucket",
    "fusion.dropout": "dropout of the fusion and the task head",
    "train.max_epochs": "epochs at most (early stopping may end sooner)",
    "train.batch_size": "rows per batch (with DDP: the global batch, split between the processes)",
    "train.lr": "learning rate (AdamW)",
    "train.weight_decay": "AdamW weight decay",
    "train.patience": "epochs without improvement of the validation metric before early stopping",
    "train.seed": "seeds the split, the initialization and the batches",
    "train.accelerator": "Lightning's accelerator: auto (a GPU when there is one), cpu, gpu...",
    "train.precision": "Lightning's precision, e.g. 32-true, bf16-mixed",
    "train.modality_dropout": "probability of hiding each input of a training row, so the model learns without it",
    "train.progress": "show a progress bar",
    "train.restart": "discard a checkpoint found in checkpoint_dir and start over (never saved with the model)",
    "align.dropout": "dropout of each column's projection head",
    "rl.algo": "the Stable-Baselines3 algorithm",
    "rl.seed": "seeds the envs, the policy and the evaluations",
    "rl.net_arch": "SB3's net_arch of the policy and value heads; None: SB3's default",
    "rl.eval_episodes": "episodes per evaluation of the learning curve",
}


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    return text if text.endswith((".", "?", "!")) else text + "."


def _type_name(t: Any) -> str:
    # as `polymodal config --paths` prints it
    return getattr(t, "__name__", None) or str(t).replace("typing.", "")


def _default(value: Any) -> str:
    # written as YAML would take it in a config file or after --set
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value)


def field_help(cls: type) -> dict[str, str]:
    """{field: its comment}: the comment lines just above a field plus the comment at the end of its line(s)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if not text.startswith(("fmt:", "noqa", "type:")):
                comments[tok.start[0]] = text
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    out: dict[str, str] = {}
    body = ast.parse(source).body[0]
    for node in getattr(body, "body", []):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above, line = [], node.lineno - 1
        while line in comments and line not in code_lines:  # a comment block right above the field
            above.insert(0, comments[line])
            line -= 1
        beside = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments]
        out[node.target.id] = " ".join(above + beside)
    return out


def _cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    # raw HTML: in a markdown table an escaped pipe inside backticks would show its backslash
    return f"<code>{html.escape(text, quote=False).replace('|', '&#124;')}</code>"


def _docstring(cls: type) -> str:
    doc = inspect.getdoc(cls) or ""
    # a dataclass without a docstring gets its generated signature as one
    return "" if doc.startswith(f"{cls.__name__}(") else " ".join(doc.split())


def render() -> str:
    """The markdown of the reference: one table per section of the tree."""
    from polymodal.config import Config, leaf_type

    cfg = Config()
    sections: dict[str, list[str]] = {}
    for path in Config.paths():
        sections.setdefault(path.split(".")[0], []).append(path)
    out: list[str] = []
    for section, paths in sections.items():
        out.append(f"## `{section}`\n")
        intro = _docstring(type(cfg.get(section)))
        if intro:
            out.append(intro + "\n")
        out.append("| setting | type | default | help |")
        out.append("|---|---|---|---|")
        for path in paths:
            parent, _, name = path.rpartition(".")
            owner = type(cfg.get(parent))
            help_ = _sentence(field_help(owner).get(name) or FALLBACK_HELP.get(path, ""))
            meta = {f.name: f.metadata for f in dataclasses.fields(owner)}.get(name, {})
            if "choices" in meta:
                choices = ", ".join(_default(c) for c in meta["choices"])
                help_ = f"{help_} One of: {choices}.".strip()
            default = _default(cfg.get(path))
            out.append(f"| `{path}` | {_code(_type_name(leaf_type(path)))} | {_code(default)} | {_cell(help_)} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # python docs/hooks/gen_config.py: print the page's generated part
    print(render())
