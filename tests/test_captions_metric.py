"""The caption parser and attribute accuracy of benchmarks/captions.py, on hand-made captions."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from captions import assemble, attribute_accuracy, parse_caption  # noqa: E402

REF = (
    "red circle top left, green square middle centre, blue square bottom right, orange circle top right, "
    "gray square middle left, yellow circle bottom centre"
)


def test_parse_reads_the_generator_phrasing_and_the_model_spacing():
    want = {"red": ("circle", "top", "left"), "green": ("square", "middle", "centre"),
            "blue": ("square", "bottom", "right"), "orange": ("circle", "top", "right"),
            "gray": ("square", "middle", "left"), "yellow": ("circle", "bottom", "centre")}  # fmt: skip
    assert parse_caption(REF) == want
    # A text model's output: lower-cased words with the commas as tokens between spaces.
    assert parse_caption(REF.replace(",", " ,").upper()) == want
    assert assemble(want) == REF


def test_all_right():
    acc = attribute_accuracy([REF, REF], [REF, REF.replace(", ", " , ")])
    assert acc == {"all": 1.0, "shape": 1.0, "row": 1.0, "column": 1.0}


def test_one_shape_wrong():
    hyp = REF.replace("red circle", "red square")
    acc = attribute_accuracy([REF], [hyp])
    assert acc["all"] == pytest.approx(17 / 18)
    assert acc["shape"] == pytest.approx(5 / 6)
    assert acc["row"] == acc["column"] == 1.0


def test_missing_colour_is_wrong_on_its_three_attributes():
    hyp = REF.replace("blue square bottom right, ", "")
    acc = attribute_accuracy([REF], [hyp])
    assert acc["all"] == pytest.approx(15 / 18)
    assert acc["shape"] == acc["row"] == acc["column"] == pytest.approx(5 / 6)


def test_malformed_parts_count_wrong_and_a_repeated_colour_keeps_its_first_part():
    # "red circle" lacks its cell (row and column wrong); green named twice: the first (wrong row) is read.
    hyp = REF.replace("red circle top left", "red circle").replace(
        "green square middle centre", "green square top centre, green square middle centre"
    )
    got = parse_caption(hyp)
    assert got["red"] == ("circle", None, None)
    assert got["green"] == ("square", "top", "centre")
    acc = attribute_accuracy([REF], [hyp])
    assert acc["all"] == pytest.approx(15 / 18)
    assert attribute_accuracy([REF], [""])["all"] == 0.0
    with pytest.raises(ValueError):
        attribute_accuracy([REF], [])
