import numpy as np
import pandas as pd
import pytest

from polymodal.data import Modality, ProblemType, SchemaError, infer_schema, read_table
from polymodal.data.schema import CATEGORICAL_INPUT, NUMERIC_INPUT


def table() -> pd.DataFrame:
    n = 40
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "review": [f"this product was really quite good number {i}" for i in range(n)],
            "photo": [f"imgs/{i}.jpg" for i in range(n)],
            "voice": [f"clips/{i}.wav" for i in range(n)],
            "price": rng.normal(10, 2, n),
            "stars": rng.integers(1, 6, n),
            "city": rng.choice(["paris", "rome", "oslo"], n),
            "y": rng.choice(["pos", "neg"], n),
        }
    )


def test_infers_each_modality_and_binary_label():
    s = infer_schema(table(), "y")
    assert s.columns == {
        "review": Modality.TEXT,
        "photo": Modality.IMAGE,
        "voice": Modality.AUDIO,
        "price": Modality.NUMERIC,
        "stars": Modality.CATEGORICAL,  # a small integer code
        "city": Modality.CATEGORICAL,
    }
    assert s.problem_type is ProblemType.BINARY
    assert list(s.inputs) == ["review", "photo", "voice", NUMERIC_INPUT, CATEGORICAL_INPUT]


@pytest.mark.parametrize(
    "values, expected",
    [
        (list(range(5)) * 8, ProblemType.MULTICLASS),
        (["a", "b", "c", "d"] * 10, ProblemType.MULTICLASS),
        (list(np.linspace(0, 1, 40)), ProblemType.REGRESSION),
        ([0, 1] * 20, ProblemType.BINARY),
    ],
)
def test_infers_problem_type(values, expected):
    df = table().assign(y=values)
    assert infer_schema(df, "y").problem_type is expected


def test_overrides_ignore_and_round_trip():
    s = infer_schema(table(), "y", overrides={"stars": "numeric", "city": Modality.TEXT}, ignore=["voice"])
    assert s.columns["stars"] is Modality.NUMERIC and s.columns["city"] is Modality.TEXT
    assert "voice" not in s.columns
    assert type(s).from_dict(s.to_dict()) == s


def test_unknown_column_names_the_column_and_lists_the_table():
    with pytest.raises(SchemaError, match=r"unknown column\(s\) \['captoin'\].*'review'"):
        infer_schema(table(), "y", overrides={"captoin": "text"})
    with pytest.raises(SchemaError, match=r"unknown column\(s\) \['label'\]"):
        infer_schema(table(), "label")


def test_fully_empty_column_is_an_error_with_the_fix():
    df = table().assign(notes=np.nan)
    with pytest.raises(SchemaError, match=r"column 'notes' is 100% empty.*--ignore notes"):
        infer_schema(df, "y")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_reads_each_table_format_and_resolves_against_its_folder(tmp_path, suffix):
    df = table()
    path = tmp_path / f"t{suffix}"
    {".csv": lambda: df.to_csv(path, index=False), ".parquet": lambda: df.to_parquet(path),
     ".jsonl": lambda: df.to_json(path, orient="records", lines=True)}[suffix]()  # fmt: skip
    out, base = read_table(path)
    assert base == tmp_path.resolve()
    assert list(out.columns) == list(df.columns) and len(out) == len(df)


def test_unknown_table_format(tmp_path):
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(ValueError, match=r"unknown table format '.xlsx'.*\.parquet"):
        read_table(tmp_path / "t.xlsx")
