"""The options (and arguments) several verbs share, each declared once as a typer `Annotated` alias: its flag names
and help text live here, the default stays at the use (`label: LabelOpt = None`).

Where verbs word the same flag differently (the terse '[30]' of compare beside fit's full sentence, or a meaning
of their own, as align's --patience), each wording is an alias of its own, named after the flag plus a suffix:
Terse for the bare default, or the verb that words it so."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# ---- tables and folders ------------------------------------------------------------------------------------------
TrainTable = Annotated[Path, typer.Argument(help="Training table: .csv, .tsv, .parquet or .jsonl")]
ModelFolder = Annotated[Path, typer.Argument(help="Model folder")]
ModelOutput = Annotated[Path, typer.Option("--output", "-o", help="Model folder to write")]
Valid = Annotated[Path | None, typer.Option(help="Validation table (default: a stratified 10 % split of train)")]
ValidCompare = Annotated[Path | None, typer.Option(help="Validation table (default: a 10 % split of train per seed)")]
ValidAlign = Annotated[Path | None, typer.Option(help="Validation table (default: a 10 % split of train)")]
ValidTune = Annotated[Path | None, typer.Option(help="Validation table (default: a stratified split of train)")]

# ---- the label, the config tree and --set --------------------------------------------------------------------------
LabelOpt = Annotated[str | None, typer.Option("--label", "-y", help="The column to predict (data.label)")]
LabelTune = Annotated[str, typer.Option("--label", "-y", help="The column to predict")]
LabelAlign = Annotated[str | None, typer.Option("--label", "-y", help="Rows sharing this label are positives too")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="Config tree (YAML or JSON); flags and --set override it")
]
ConfigTune = Annotated[Path | None, typer.Option(help="Base config YAML every trial starts from")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Any setting by dotted path: --set train.lr=3e-4 (repeatable; `polymodal config`)"),
]

# ---- columns: which modality each is (data.modalities), which to leave out, the problem ------------------------------
TextCols = Annotated[list[str] | None, typer.Option("--text", help="Treat this column as text (repeatable)")]
ImageCols = Annotated[list[str] | None, typer.Option("--image", help="Treat this column as image paths (repeatable)")]
AudioCols = Annotated[list[str] | None, typer.Option("--audio", help="Treat this column as audio paths (repeatable)")]
VideoCols = Annotated[
    list[str] | None, typer.Option("--video", help="Treat this column as video paths: frames + sound (repeatable)")
]
NumericCols = Annotated[list[str] | None, typer.Option("--numeric", help="Treat this column as numeric (repeatable)")]
CategoricalCols = Annotated[
    list[str] | None, typer.Option("--categorical", help="Treat this column as categorical (repeatable)")
]
IgnoreCols = Annotated[list[str] | None, typer.Option("--ignore", help="Leave this column out (repeatable)")]
ProblemTypeOpt = Annotated[
    str | None, typer.Option(help="binary | multiclass | regression | multilabel | text (default: inferred)")
]

# ---- reading the table -----------------------------------------------------------------------------------------------
OnBadRows = Annotated[str | None, typer.Option(help="error | skip")]
OnBadRowsFit = Annotated[str | None, typer.Option(help="error: stop, list bad rows | skip: drop them, write a report")]
OnBadRowsPredict = Annotated[
    str | None, typer.Option(help="error | missing (treat a broken file as an absent modality)")
]
Streaming = Annotated[
    str | None,
    typer.Option(help="on: read the table in chunks (larger than memory) | off: all in memory | auto (data.streaming)"),
]
GroupBy = Annotated[
    str | None,
    typer.Option(help="A column naming groups of rows (e.g. question type): metrics per value too (data.group_by)"),
]
SplitBy = Annotated[
    str | None,
    typer.Option(
        help="A column saying who each row comes from (speaker, patient): validation holds out whole groups "
        "(data.split_by)"
    ),
]

# ---- preprocessing -------------------------------------------------------------------------------------------------
ImageSize = Annotated[int | None, typer.Option(help="Images are resized to this square size [64]")]
ImageFit = Annotated[str | None, typer.Option(help="squash: resize to the square | pad: keep the aspect ratio")]
SampleRate = Annotated[int | None, typer.Option(help="Audio is resampled to this rate [16000]")]

# ---- encoders and fusion -------------------------------------------------------------------------------------------
TextEncoder = Annotated[str | None, typer.Option(help="Pretrained text encoder: registry name, HF id or folder")]
ImageEncoder = Annotated[str | None, typer.Option(help="Pretrained image encoder: registry name, HF id or folder")]
AudioEncoder = Annotated[str | None, typer.Option(help="Pretrained audio encoder: speech-embedding, HF id or folder")]
Preset = Annotated[str | None, typer.Option(help="pretrained: the offline defaults (see `polymodal encoders`)")]
Finetune = Annotated[
    bool | None, typer.Option("--finetune/--freeze", help="Fine-tune pretrained encoders, or freeze them [freeze]")
]
CacheDir = Annotated[Path | None, typer.Option(help="Feature cache of frozen encoders (default: ~/.cache/polymodal)")]
EmbedDim = Annotated[int | None, typer.Option(help="Embedding size of every encoder [128]")]
EmbedDimTerse = Annotated[int | None, typer.Option(help="[128]")]
EmbedDimAlign = Annotated[int | None, typer.Option(help="Output size of each encoder [128]")]
EmbedDimRL = Annotated[int | None, typer.Option(help="Embedding size of every encoder [64]")]
FusionOpt = Annotated[
    str | None,
    typer.Option(
        help="early | late | attention | gmu | tensor | low_rank | cross_attention; token-level: relation | film | "
        "token_transformer [attention]"
    ),
]
FusionRL = Annotated[
    str | None, typer.Option(help="early | late | attention | gmu | tensor | low_rank | cross_attention [early]")
]
ModalityDropout = Annotated[float | None, typer.Option(help="Hide each modality with this probability in training [0]")]

# ---- training ------------------------------------------------------------------------------------------------------
MaxEpochs = Annotated[int | None, typer.Option(help="Upper bound on epochs; early stopping usually ends sooner [30]")]
MaxEpochsTerse = Annotated[int | None, typer.Option(help="[30]")]
BatchSize = Annotated[int | None, typer.Option(help="[64]")]
BatchSizeAlign = Annotated[int | None, typer.Option(help="Rows per batch: the in-batch negatives [64]")]
Lr = Annotated[float | None, typer.Option(help="AdamW learning rate [1e-3]")]
LrTerse = Annotated[float | None, typer.Option(help="[1e-3]")]
Patience = Annotated[int | None, typer.Option(help="Epochs without improvement before early stopping [6]")]
PatienceTerse = Annotated[int | None, typer.Option(help="[6]")]
PatienceAlign = Annotated[
    int | None, typer.Option(help="Epochs without a better validation recall@1 before stopping [6]")
]
Seed = Annotated[int | None, typer.Option(help="[0]")]
Accelerator = Annotated[str | None, typer.Option(help="auto | cpu | gpu [auto]")]
AcceleratorTerse = Annotated[str | None, typer.Option(help="auto | cpu | gpu")]
# --time-limit: a float of seconds for one fit (train.time_limit); a duration ('90s', '10m', '2h') for a study
TimeLimit = Annotated[
    float | None,
    typer.Option(
        metavar="SECONDS",
        help="Stop training after this many seconds (the best epoch so far is kept) (train.time_limit)",
    ),
]
TimeLimitCompare = Annotated[
    str | None,
    typer.Option(
        metavar="DURATION",
        help="The whole compare's time budget, shared fairly across its entries; entries cut short are marked in the "
        "leaderboard",
    ),
]
TimeLimitTune = Annotated[
    str | None,
    typer.Option(
        metavar="DURATION",
        help="The study's time budget, shared across trials (each trial stops within its share; also ends the search)",
    ),
]

# ---- privacy -------------------------------------------------------------------------------------------------------
Anonymize = Annotated[
    bool | None,
    typer.Option(
        "--anonymize",
        help="Anonymize the tables first (text, faces, voices) into OUTPUT.anonymized/ and train on that copy",
    ),
]
PrivacyOperator = Annotated[
    str | None,
    typer.Option(help="placeholder: <EMAIL_ADDRESS> | mask: ***** | hash: salted, from $POLYMODAL_PRIVACY_SALT"),
]
NerModel = Annotated[
    str | None, typer.Option(help="Token-classification model (HF id or folder) for names, places, organizations")
]

# ---- running a saved model, and its robustness -------------------------------------------------------------------
Runtime = Annotated[
    str, typer.Option(help="torch: the model folder | onnx: an exported .onnx (or a folder with model.onnx)")
]
NoiseLevels = Annotated[int, typer.Option(help="Noise levels per modality for robustness (0: skip the noise)")]
NoiseRows = Annotated[int, typer.Option(help="Measure the noise curves on a fixed sample of this many test rows")]
