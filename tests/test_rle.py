"""common.io.rle against the reference implementations, edge cases, bad input and real strings."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from common.io.rle import (
    ColumnRunWriter,
    rle_decode,
    rle_decode_window,
    rle_encode,
    siim_rle_decode,
    siim_rle_encode,
)
from tests.conftest import shared_path
from tests.reference import ref_rle_decode, ref_rle_encode, ref_siim_decode, ref_siim_encode

shapes = st.tuples(st.integers(1, 23), st.integers(1, 23))
masks = shapes.flatmap(lambda shape: arrays(np.uint8, shape, elements=st.sampled_from([0, 1])))


@settings(max_examples=300, deadline=None)
@given(mask=masks, order=st.sampled_from(["F", "C"]))
def test_absolute_matches_reference(mask, order):
    rle = rle_encode(mask, order=order)
    assert rle == ref_rle_encode(mask, order)
    np.testing.assert_array_equal(rle_decode(rle, mask.shape, order=order), mask)
    np.testing.assert_array_equal(ref_rle_decode(rle, mask.shape, order), mask)


@settings(max_examples=300, deadline=None)
@given(mask=masks)
def test_siim_matches_reference(mask):
    rle = siim_rle_encode(mask)
    assert rle == ref_siim_encode(mask)
    np.testing.assert_array_equal(siim_rle_decode(rle, mask.shape), mask)
    np.testing.assert_array_equal(ref_siim_decode(rle, mask.shape), mask)


def _edge_masks():
    shape = (7, 5)
    empty = np.zeros(shape, np.uint8)
    yield "empty", empty
    yield "full", np.ones(shape, np.uint8)
    for r, c in [(0, 0), (6, 4), (0, 4), (6, 0), (3, 2)]:
        single = empty.copy()
        single[r, c] = 1
        yield f"pixel {r},{c}", single
    border = np.ones(shape, np.uint8)
    border[1:-1, 1:-1] = 0
    yield "border", border
    column_wrap = empty.copy()
    column_wrap[5:, 0] = 1
    column_wrap[:2, 1] = 1  # one F-order run across the column boundary
    yield "column wrap", column_wrap
    yield "wide", (np.arange(3 * 40).reshape(3, 40) % 3 == 0).astype(np.uint8)
    yield "tall", (np.arange(40 * 3).reshape(40, 3) % 4 == 1).astype(np.uint8)


@pytest.mark.parametrize(
    ("name", "mask"), list(_edge_masks()), ids=lambda v: v if isinstance(v, str) else ""
)
@pytest.mark.parametrize("order", ["F", "C"])
def test_edge_masks_round_trip(name, mask, order):
    rle = rle_encode(mask, order=order)
    assert rle == ref_rle_encode(mask, order)
    np.testing.assert_array_equal(rle_decode(rle, mask.shape, order=order), mask)
    siim = siim_rle_encode(mask)
    assert siim == ref_siim_encode(mask)
    np.testing.assert_array_equal(siim_rle_decode(siim, mask.shape), mask)


def test_golden_values():
    mask = np.array([[1, 0, 1], [1, 1, 0]], dtype=np.uint8)
    assert rle_encode(mask) == "1 2 4 2"  # column-major: 1,1 | 0,1 | 1,0
    assert rle_encode(mask, order="C") == "1 1 3 3"
    assert siim_rle_encode(mask) == "0 2 1 2"
    assert rle_encode(np.zeros((4, 4))) == ""
    assert siim_rle_encode(np.zeros((4, 4))) == "-1"


def test_run_reaching_the_last_pixel_is_encoded():
    full = np.ones((1024, 1024), np.uint8)
    assert siim_rle_encode(full) == "0 1048576"
    last = np.zeros((1024, 1024), np.uint8)
    last[-3:, -1] = 1
    assert siim_rle_encode(last) == "1048573 3"
    assert rle_encode(last) == "1048574 3"


@pytest.mark.parametrize(
    "dtype_mask",
    [
        np.array([[True, False], [True, True]]),
        np.array([[1, 0], [1, 1]], dtype=np.int64),
        np.array([[255, 0], [255, 255]], dtype=np.uint8),
        np.array([[255, 0], [255, 255]], dtype=np.int32),
        np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32),
    ],
)
def test_mask_value_conventions(dtype_mask):
    assert rle_encode(dtype_mask) == "1 2 4 1"
    assert siim_rle_encode(dtype_mask) == "0 2 1 1"


@pytest.mark.parametrize(
    "bad", [np.array([[2, 0]], np.uint8), np.array([[0.5, 0]]), np.array([[0, -1]])]
)
def test_mask_values_other_than_binary_are_refused(bad):
    with pytest.raises(ValueError, match="0/1 or 0/255"):
        rle_encode(bad)


def test_mask_must_be_2d():
    with pytest.raises(ValueError, match="2-D"):
        rle_encode(np.zeros((2, 2, 2), np.uint8))


@pytest.mark.parametrize("empty", ["", "   ", None, float("nan")])
def test_absolute_empty_forms(empty):
    assert rle_decode(empty, (3, 4)).sum() == 0
    assert rle_decode(empty, (3, 4)).shape == (3, 4)


@pytest.mark.parametrize("empty", ["-1", " -1", "-1\n", "\t -1 \r\n"])
def test_siim_empty_forms(empty):
    assert siim_rle_decode(empty, (3, 4)).sum() == 0


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number of tokens"),
        ("1 x", "token 2 .'x'. is not an integer"),
        ("1 2.5", "token 2 .'2.5'. is not an integer"),
        ("1 -", "token 2"),
        ("0 1", "pair 1 .0 1.: start must be >= 1"),
        ("-3 1", "pair 1 .-3 1.: start must be >= 1"),
        ("1 0", "pair 1 .1 0.: run length must be positive"),
        ("1 -2", "run length must be positive"),
        ("5 2 3 1", "pair 2 .3 1.: .*overlapping or unordered"),
        ("1 3 2 1", "pair 2 .2 1.: .*overlapping or unordered"),
        ("12 2", "pair 1 .12 2.: run goes past the end of the 3x4 image"),
        ("1 1 13 1", "pair 2 .13 1.: run goes past the end"),
        ("1 99999999999999999999", "too many digits"),
        ("1 ２", "non-ASCII"),
    ],
)
def test_absolute_bad_input(rle, message):
    with pytest.raises(ValueError, match=message):
        rle_decode(rle, (3, 4))


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("", "missing value"),
        (None, "missing value"),
        (float("nan"), "missing value"),
        ("0 2 1", "odd number of tokens"),
        ("-1 4", "pair 1 .-1 4.: gap must be >= 0"),
        (
            "0 2 -1 1",
            "pair 2 .-1 1.: gap must be >= 0 .a negative gap means overlapping or unordered",
        ),
        ("0 0", "run length must be positive"),
        ("10 3", "run goes past the end of the 3x4 image"),
        ("3 a", "token 2 .'a'. is not an integer"),
    ],
)
def test_siim_bad_input(rle, message):
    with pytest.raises(ValueError, match=message):
        siim_rle_decode(rle, (3, 4))


def test_bad_shape_and_order():
    with pytest.raises(ValueError, match="shape"):
        rle_decode("1 1", (0, 3))
    with pytest.raises(ValueError, match="order must be one of"):
        rle_decode("1 1", (3, 3), order="K")
    with pytest.raises(ValueError, match="order must be one of"):
        rle_encode(np.zeros((2, 2)), order="row")


def _read_siim_rows(path):
    """(ImageId, EncodedPixels) rows of any of the real SIIM CSV variants."""
    text = path.read_bytes().decode("utf-8-sig")
    rows = [line.split(",", 1) for line in text.splitlines() if line.strip()]
    if rows[0][0].strip() == "ImageId":
        rows = rows[1:]
    return rows


@pytest.mark.parametrize(
    "name",
    [
        "train-rle.reconstructed.csv",
        "train-rle.partial-head.csv",
        "train-rle-sample.csv",
    ],
)
def test_real_siim_strings_round_trip(name):
    rows = _read_siim_rows(shared_path("siim", name))
    assert rows
    for image_id, encoded in rows:
        mask = siim_rle_decode(encoded)
        assert siim_rle_encode(mask) == " ".join(encoded.split()), image_id


def test_real_siim_decode_matches_independent_png():
    rows = dict(_read_siim_rows(shared_path("siim", "train-rle.reconstructed.csv")))
    png = shared_path(
        "siim", "derived_masks", "1.2.276.0.7230010.3.1.4.8323329.301.1517875162.280319_gt.png"
    )
    expected = np.asarray(Image.open(png)) > 0
    decoded = siim_rle_decode(rows["1.2.276.0.7230010.3.1.4.8323329.301.1517875162.280319"])
    np.testing.assert_array_equal(decoded, expected)


def test_real_tgs_strings_match_their_pngs():
    folder = shared_path("tgs_salt")
    with open(folder / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4000
    for row in rows:
        truth = np.asarray(Image.open(folder / "train" / "masks" / f"{row['id']}.png")) > 0
        decoded = rle_decode(row["rle_mask"], truth.shape)
        np.testing.assert_array_equal(decoded, truth, err_msg=row["id"])
        assert rle_encode(decoded) == " ".join(row["rle_mask"].split()), row["id"]


@settings(max_examples=300, deadline=None)
@given(mask=masks, cuts=st.lists(st.integers(0, 23), max_size=4), data=st.data())
def test_column_run_writer_equals_the_whole_mask_encoding(mask, cuts, data):
    height, width = mask.shape
    edges = sorted({0, height, *(c for c in cuts if c < height)})
    blocks = list(itertools.pairwise(edges))
    blocks = data.draw(st.permutations(blocks))  # any order
    writer = ColumnRunWriter(height, width)
    for y0, y1 in blocks:
        writer.add(y0, mask[y0:y1] * 255)
    assert writer.encode() == ref_rle_encode(mask, "F")


@settings(max_examples=300, deadline=None)
@given(mask=masks, order=st.sampled_from(["F", "C"]), data=st.data())
def test_window_decode_equals_a_crop_of_the_whole(mask, order, data):
    height, width = mask.shape
    y0 = data.draw(st.integers(0, height - 1))
    y1 = data.draw(st.integers(y0 + 1, height))
    x0 = data.draw(st.integers(0, width - 1))
    x1 = data.draw(st.integers(x0 + 1, width))
    rle = ref_rle_encode(mask, order)
    window = rle_decode_window(rle, mask.shape, (y0, y1, x0, x1), order=order)
    np.testing.assert_array_equal(window, mask[y0:y1, x0:x1])


def test_column_run_writer_and_window_bad_input():
    writer = ColumnRunWriter(4, 3)
    writer.add(0, np.ones((2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"rows 1\.\.2: some were already added"):
        writer.add(1, np.ones((2, 3), np.uint8))
    with pytest.raises(ValueError, match="does not fit the 4x3 mask"):
        writer.add(2, np.ones((2, 4), np.uint8))
    with pytest.raises(ValueError, match="row 2 of the 4x3 mask was not added"):
        writer.encode()
    with pytest.raises(ValueError, match="not inside the 4x3 image"):
        rle_decode_window("1 2", (4, 3), (0, 5, 0, 1))
    with pytest.raises(ValueError, match=r"pair 2 .*past the end of the 4x3 image"):
        rle_decode_window("1 2 11 5", (4, 3), (0, 1, 0, 1))  # outside the window, still checked
    assert rle_decode_window("", (4, 3), (1, 3, 0, 2)).shape == (2, 2)


def test_real_hubmap_full_scale_string_through_rows_and_windows():
    """A real predicted mask of HuBMAP image 0486052bb (25,784 x 34,937, 42,366 runs): decoded
    and re-encoded in 2,048-row blocks gives the identical string; windows equal the crops."""
    path = shared_path("hubmap", "predicted_0486052bb.csv")
    csv.field_size_limit(1 << 30)
    with open(path, newline="") as f:
        (_, rle), *_ = list(csv.reader(f))[1:]
    shape = (25784, 34937)
    writer = ColumnRunWriter(*shape)
    whole = rle_decode(rle, shape)
    assert int(whole.sum()) == 10_144_946
    for y0 in range(0, shape[0], 2048):
        writer.add(y0, whole[y0 : y0 + 2048])
    assert writer.encode() == rle.strip()
    rng = np.random.default_rng(0)
    ys, xs = np.nonzero(whole[::64, ::64])
    for k in rng.choice(len(ys), 5, replace=False):
        y, x = int(ys[k]) * 64, int(xs[k]) * 64
        window = (max(0, y - 500), min(shape[0], y + 500), max(0, x - 700), min(shape[1], x + 700))
        crop = whole[window[0] : window[1], window[2] : window[3]]
        np.testing.assert_array_equal(rle_decode_window(rle, shape, window), crop)
        assert crop.any()
