"""SIIM raw readers: every CSV quirk of the real files, OR-merge, DICOM discovery, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from common.io.dicom import find_dicoms
from common.io.paths import check_id
from common.io.rle import siim_rle_decode
from common.io.rle_csv import merged_masks, read_rle_csv
from tests.conftest import shared_path

ID_307 = "1.2.276.0.7230010.3.1.4.8323329.307.1517875162.311533"


def test_partial_head_header_with_space_and_leading_space_values():
    frame = read_rle_csv(shared_path("siim", "train-rle.partial-head.csv"))
    assert len(frame) == 18 and frame["ImageId"].nunique() < 18
    assert frame["EncodedPixels"].iloc[0] == "-1"  # ' -1' stripped
    assert frame["line"].iloc[0] == 2
    counts = frame["ImageId"].value_counts()
    assert counts.max() == 4 and "8323329.32579." in counts.idxmax()


def test_sample_with_bom_crlf_and_no_header():
    frame = read_rle_csv(shared_path("siim", "train-rle-sample.csv"))
    assert len(frame) == 10
    assert frame["ImageId"].iloc[0] == "1.2.276.0.7230010.3.1.4.8323329.1000.1517875165.878027"
    assert frame["EncodedPixels"].str.contains("\r").sum() == 0
    assert (frame["EncodedPixels"] == "-1").sum() == 5


def test_reconstructed_full_file():
    frame = read_rle_csv(shared_path("siim", "train-rle.reconstructed.csv"))
    assert len(frame) == 11582 and frame["ImageId"].nunique() == 10675


def test_stage2_style_without_spaces(tmp_path):
    path = tmp_path / "stage_2_train.csv"
    path.write_text("ImageId,EncodedPixels\nID_a,-1\nID_b,3 2 1 1\nID_b,0 1\n")
    frame = read_rle_csv(path)
    masks = merged_masks(frame, shape=(4, 4), source=str(path))
    assert masks["ID_a"].sum() == 0
    assert masks["ID_b"].sum() == 4  # pixels 0, 3, 4 and 6: the two rows ORed


def test_or_merge_equals_union_of_annotations():
    frame = read_rle_csv(shared_path("siim", "train-rle.reconstructed.csv"))
    rows = frame[frame["ImageId"] == ID_307]
    assert len(rows) == 4
    merged = merged_masks(rows)[ID_307]
    decoded = [siim_rle_decode(e) for e in rows["EncodedPixels"]]
    np.testing.assert_array_equal(merged, np.logical_or.reduce(decoded).astype(np.uint8))
    assert max(d.sum() for d in decoded) < merged.sum() <= sum(d.sum() for d in decoded)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("ImageId,Pixels\na,-1\n", "header"),
        ("ImageId,EncodedPixels\na,-1,3\n", "line 2: expected 2 fields"),
        ("ImageId,EncodedPixels\na\n", "line 2: expected 2 fields"),
        ("ImageId,EncodedPixels\na,-1\nb, \n", "line 3: EncodedPixels is empty"),
        (
            "ImageId,EncodedPixels\n../../etc/passwd,-1\n",
            "line 2: image id '../../etc/passwd' is not a plain file name",
        ),
        ("ImageId,EncodedPixels\n", "no data rows"),
    ],
)
def test_bad_csv(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_rle_csv(path)


def test_bad_rle_names_file_and_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("ImageId,EncodedPixels\na,-1\nb,5 2 -9 1\n")
    with pytest.raises(ValueError, match=r"bad.csv, line 3: SIIM RLE: pair 2"):
        merged_masks(read_rle_csv(path), shape=(4, 4), source=str(path))


def test_find_dicoms_recursive_and_duplicates(tmp_path):
    for rel in ["s1/r1/a.dcm", "s1/r2/b.dcm", "c.dcm", "s2/notes.txt"]:
        (tmp_path / "train" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / rel).write_bytes(b"")
    found = find_dicoms(tmp_path / "train")
    assert sorted(found) == ["a", "b", "c"] and found["a"].parent.name == "r1"
    (tmp_path / "train" / "s2" / "a.dcm").write_bytes(b"")
    with pytest.raises(ValueError, match="ImageId 'a' has two DICOM files"):
        find_dicoms(tmp_path / "train")
    with pytest.raises(ValueError, match="DICOM folder not found"):
        find_dicoms(tmp_path / "absent")


def test_find_real_stage2_ids():
    found = find_dicoms(shared_path("siim", "stage2_test_dicom"))
    assert len(found) == 8 and all(k.startswith("ID_") for k in found)


@pytest.mark.parametrize("bad", ["", ".", "..", ".hidden", "a/b", "a\\b", "a b", "/abs", None])
def test_check_id_refuses_escaping_ids(bad):
    with pytest.raises(ValueError, match="not a plain file name"):
        check_id(bad)
