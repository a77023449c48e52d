"""common.submit.submission (with the SIIM format): atomic writing, and every malformed case refused."""

from __future__ import annotations

import numpy as np
import pytest

from common.io.rle import siim_rle_encode
from common.submit.submission import SubmissionError, validate_submission, write_submission
from competitions.siim.submission import FORMAT

IDS = ["a", "b", "c"]
SHAPE = (32, 32)


def _mask():
    mask = np.zeros(SHAPE, np.uint8)
    mask[4:9, 10:20] = 1
    return mask


def _check(path):
    return validate_submission(path, IDS, FORMAT, lambda _: SHAPE)


def test_valid_submission_round_trip(tmp_path):
    rows = [("a", "-1"), ("b", siim_rle_encode(_mask())), ("c", "-1")]
    assert write_submission(rows, tmp_path / "s.csv", FORMAT) == 3
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "ImageId,EncodedPixels"
    assert _check(tmp_path / "s.csv") == {"rows": 3, "empty": 2, "non_empty": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["s.csv"]


GOOD = siim_rle_encode(_mask())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ImageId,EncodedPixels\na,-1\nb,-1\n", r"1 sample id\(s\) missing, e.g. 'c'"),
        ("ImageId,EncodedPixels\na,-1\nb,-1\nb,-1\nc,-1\n", r"line 4: id 'b' repeats line 3"),
        ("ImageId,EncodedPixels\na,-1\nb,-1\nc,-1\nd,-1\n", r"line 5: id 'd' is not in the sample"),
        ("ImageId,EncodedPixels\na,-1\nb,5 7 3\nc,-1\n", r"line 3 \(b\): .*odd"),
        ("ImageId,EncodedPixels\na,-1\nb,1000 30\nc,-1\n", r"line 3 \(b\): .*past the end"),
        ("ImageId,EncodedPixels\na,-1\nb,x y\nc,-1\n", r"line 3 \(b\)"),
        ("ImageId, EncodedPixels\na,-1\nb,-1\nc,-1\n", r"line 1: header"),
        ("Id,Mask\na,-1\nb,-1\nc,-1\n", r"line 1: header 'Id,Mask'"),
        ("ImageId,EncodedPixels\na,\nb,-1\nc,-1\n", r"line 2: empty value; an empty mask is '-1'"),
        ("ImageId,EncodedPixels\na,-1,3\nb,-1\nc,-1\n", r"line 2: 3 fields, expected 2"),
        ("", r"header '\(empty file\)'"),
    ],
)
def test_every_malformed_case_is_refused(tmp_path, text, message):
    (tmp_path / "s.csv").write_text(text)
    with pytest.raises(SubmissionError, match=message):
        _check(tmp_path / "s.csv")


def test_all_problems_listed_at_once(tmp_path):
    (tmp_path / "s.csv").write_text(f"ImageId,EncodedPixels\na,-1\na,{GOOD}\nz,-1\n")
    with pytest.raises(SubmissionError) as caught:
        _check(tmp_path / "s.csv")
    assert len(caught.value.problems) == 3  # repeat, extra, missing (b and c)
    with pytest.raises(SubmissionError, match="file not found"):
        _check(tmp_path / "absent.csv")


def test_write_rows_refuses_a_row_that_breaks_the_csv(tmp_path):
    from common.submit.submission import write_rows

    assert (
        write_rows([("a", "x", "1 2"), ("b", "y", "")], tmp_path / "r.csv", ("id", "s", "rle")) == 2
    )
    assert (tmp_path / "r.csv").read_text() == "id,s,rle\na,x,1 2\nb,y,\n"
    with pytest.raises(ValueError, match="row 2"):
        write_rows([("a", "x", "1"), ("b,c", "y", "")], tmp_path / "bad.csv", ("id", "s", "rle"))
    assert not (tmp_path / "bad.csv").exists()
    with pytest.raises(ValueError, match="row 1"):
        write_rows([("a", "x")], tmp_path / "bad.csv", ("id", "s", "rle"))
