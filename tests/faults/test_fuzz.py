"""Fuzzed readers (property-based, seeded, bounded): whatever bytes or strings come in, a reader
gives the right answer or its documented error (``ValueError``, with the file named when there
is a file); never another exception, and never a hang (each case has 20 seconds).

Cases per reader are ``settings(max_examples=...)`` below; ``derandomize`` makes every run the
same sequence."""

from __future__ import annotations

import contextlib
import json
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import load_config
from common.data.slide_tiles import read_train
from common.io.dicom import read_dicom
from common.io.polygons import read_geojson
from common.io.rle import rle_decode, rle_decode_window, rle_encode, siim_rle_decode
from common.io.rle_csv import read_rle_csv
from common.io.slides import open_slide
from tests.conftest import REPO
from tests.reference import ref_rle_decode, ref_siim_decode

FAST = settings(max_examples=300, deadline=None, derandomize=True)
FILES = settings(max_examples=120, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
SHAPE = (7, 9)


@contextlib.contextmanager
def bounded(seconds: int = 20):
    """Fail the case (TimeoutError) rather than hang."""

    def stop(*_):
        raise TimeoutError(f"a reader ran past {seconds}s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


tokens = st.lists(st.one_of(st.integers(-3, 80).map(str), st.sampled_from(["", " ", "x", "1e2", "-1", "\t", "007"])),
                  max_size=12).map(" ".join)  # fmt: skip
valid = st.lists(st.integers(0, 1), min_size=63, max_size=63).map(
    lambda bits: rle_encode(np.array(bits, np.uint8).reshape(SHAPE), order="F")
)


def _mutations(text: str):
    return st.tuples(st.integers(0, max(0, len(text))), st.sampled_from(["", "0", " ", "9", "-", "a"])).map(
        lambda cut: text[: cut[0]] + cut[1] + text[cut[0] + 1 :]
    )  # fmt: skip


rle_strings = st.one_of(tokens, valid, valid.flatmap(_mutations))


@FAST
@given(text=rle_strings, order=st.sampled_from(["F", "C"]))
def test_absolute_rle_is_right_or_a_value_error(text, order):
    with bounded():
        try:
            mask = rle_decode(text, SHAPE, order=order)
        except ValueError:
            return
    np.testing.assert_array_equal(mask, ref_rle_decode(text, SHAPE, order=order))


@FAST
@given(text=st.one_of(rle_strings, st.just("-1"), st.just(" -1")))
def test_siim_rle_is_right_or_a_value_error(text):
    with bounded():
        try:
            mask = siim_rle_decode(text, SHAPE)
        except ValueError:
            return
    np.testing.assert_array_equal(mask, ref_siim_decode(text, SHAPE))


@FAST
@given(text=rle_strings, y0=st.integers(0, 6), x0=st.integers(0, 8), h=st.integers(1, 7),
       w=st.integers(1, 9))  # fmt: skip
def test_rle_window_is_the_window_of_the_mask_or_a_value_error(text, y0, x0, h, w):
    window = (y0, min(7, y0 + h), x0, min(9, x0 + w))
    with bounded():
        try:
            part = rle_decode_window(text, SHAPE, window)
        except ValueError:
            with pytest.raises(ValueError):
                rle_decode(text, SHAPE)
            return
    whole = rle_decode(text, SHAPE)
    np.testing.assert_array_equal(part, whole[window[0] : window[1], window[2] : window[3]])


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


csv_bytes = st.one_of(
    st.binary(max_size=200),
    st.text(alphabet="ImageId,EncodedPixels-1 0123456789\r\n\ufeffabc\x00.", max_size=160).map(str.encode),
    st.sampled_from([b"ImageId,EncodedPixels\n1.2.3,-1\n", b"\xef\xbb\xbfImageId, EncodedPixels\r\na,1 2\r\n"]),
)  # fmt: skip


@FILES
@given(data=csv_bytes)
def test_siim_csv_reader(data):
    with tempfile.TemporaryDirectory() as tmp, bounded():
        path = _write(Path(tmp), "train-rle.csv", data)
        try:
            table = read_rle_csv(path)
        except ValueError as error:
            assert str(path) in str(error)
            return
    assert list(table.columns[:2]) == ["ImageId", "EncodedPixels"] and len(table)


@FILES
@given(data=st.one_of(st.binary(max_size=200),
                      st.text(alphabet="id,encoding,1234 abc\n\"\x00", max_size=120).map(str.encode)))  # fmt: skip
def test_slide_csv_reader(data):
    with tempfile.TemporaryDirectory() as tmp, bounded():
        root = Path(tmp)
        (root / "train").mkdir()
        (root / "train" / "abc.tiff").write_bytes(b"")
        path = _write(root, "train.csv", data)
        try:
            table = read_train(root)
        except ValueError as error:
            assert str(path) in str(error)
            return
    assert list(table.columns) == ["id", "encoding"]


GEOJSON = json.dumps([{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon",
    "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]], [[2, 2], [4, 2], [3, 4], [2, 2]]]}},
    {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[[[20, 20], [30, 20], [25, 28]]]]}}])  # fmt: skip


@FILES
@given(data=st.one_of(st.binary(max_size=120), _mutations(GEOJSON).map(str.encode),
                      st.tuples(_mutations(GEOJSON), _mutations(GEOJSON)).map(lambda p: (p[0][:60] + p[1][60:]).encode())))  # fmt: skip
def test_geojson_reader(data):
    with tempfile.TemporaryDirectory() as tmp, bounded():
        path = _write(Path(tmp), "slide.json", data)
        try:
            polygons = read_geojson(path, log=lambda _: None)
        except ValueError as error:
            assert str(path) in str(error) or "slide.json" in str(error)
            return
    assert all(ring.ndim == 2 and ring.shape[1] == 2 for polygon in polygons for ring in polygon)


BASE = REPO / "competitions" / "siim" / "configs" / "base.yaml"
keys = st.sampled_from(["train.epochs", "data.size", "optim.lr", "model.encoder", "loss.terms",
                        "train.epoch", "data", "search.tops", "predict.tta", "seed", "x.y.z", ""])  # fmt: skip
values = st.one_of(st.sampled_from(["3", "-1", "0.5", "abc", "[1, 2]", "{a: 1}", "null", "", "[", "yes"]),
                   st.text(max_size=8))  # fmt: skip


@FILES
@given(pairs=st.lists(st.tuples(keys, values), max_size=3), bare=st.booleans())
def test_config_overrides(pairs, bare):
    overrides = [
        key if bare and not i else f"{key}={value}" for i, (key, value) in enumerate(pairs)
    ]
    with bounded():
        try:
            config = load_config(BASE, overrides)
        except ValueError:  # ConfigError is one; its message names the key or the override
            return
    assert config.data.size is not None


def _flips(data: bytes):
    """Strategies of a file's bytes: truncated, a byte range overwritten, or bytes flipped."""
    n = len(data)
    truncated = st.integers(0, n).map(lambda k: data[:k])
    overwritten = st.tuples(st.integers(0, n - 1), st.binary(min_size=1, max_size=64)).map(
        lambda p: data[: p[0]] + p[1] + data[p[0] + len(p[1]) :]
    )
    flipped = st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 255)), min_size=1, max_size=8).map(
        lambda flips: bytes(b ^ dict(flips).get(i, 0) for i, b in enumerate(data))
    )  # fmt: skip
    return st.one_of(truncated, overwritten, flipped)


@pytest.fixture(scope="module")
def dicom_bytes(tmp_path_factory):
    from competitions.siim.synthetic import SyntheticSpec, generate

    root = generate(
        tmp_path_factory.mktemp("dcm") / "s", SyntheticSpec(size=64, n_train=2, n_test=1), n_jobs=1
    )
    return sorted(root.rglob("*.dcm"))[0].read_bytes()


def test_mutated_dicoms(dicom_bytes):
    @FILES
    @given(data=_flips(dicom_bytes))
    def run(data):
        with tempfile.TemporaryDirectory() as tmp, bounded():
            path = _write(Path(tmp), "image.dcm", data)
            try:
                image = read_dicom(path)
            except ValueError as error:
                assert str(path) in str(error)
                return
        assert image.ndim == 2 and image.dtype == np.uint8

    run()


@pytest.fixture(scope="module")
def tiff_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("tif") / "slide.tiff"
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.integers(0, 255, (96, 80, 3), np.uint8), tile=(32, 32),
                     compression="zlib")  # fmt: skip
    return path.read_bytes()


def test_mutated_tiffs(tiff_bytes):
    @FILES
    @given(data=_flips(tiff_bytes))
    def run(data):
        with tempfile.TemporaryDirectory() as tmp, bounded():
            path = _write(Path(tmp), "slide.tiff", data)
            try:
                with open_slide(path) as slide:
                    window = slide.read(0, min(40, slide.height), 0, min(40, slide.width))
            except ValueError as error:  # SlideError is one
                assert str(path) in str(error) or "slide.tiff" in str(error)
                return
        assert window.ndim == 3 and window.shape[2] == 3

    run()


# The dataset-folder competition's readers: dataset.yaml, train.csv (both forms), images, masks.
SPEC = "name: cells\nclasses: [nucleus, wall]\nrle: absolute\norder: C\nmetric: jaccard\n"


@FILES
@given(data=st.one_of(st.binary(max_size=120), _mutations(SPEC).map(str.encode),
                      st.text(alphabet="name:clsesrl[],\n -_.x0", max_size=80).map(str.encode)))  # fmt: skip
def test_dataset_yaml(data):
    from common.io.folder import DatasetSpec, read_spec

    with tempfile.TemporaryDirectory() as tmp, bounded():
        path = _write(Path(tmp), "dataset.yaml", data)
        try:
            spec = read_spec(Path(tmp))
        except ValueError as error:
            assert str(path) in str(error)
            return
    assert isinstance(spec, DatasetSpec) and spec.order in ("C", "F")


FOLDER_CSV = "ImageId,ClassId,EncodedPixels\na,1,1 3 10 2\na,2,20 4\nb,1,\n"


@FILES
@given(data=st.one_of(_mutations(FOLDER_CSV).map(str.encode),
                      st.tuples(_mutations(FOLDER_CSV), _mutations(FOLDER_CSV)).map(lambda p: (p[0][:30] + p[1][30:]).encode()),
                      st.text(alphabet="ImageId,ClassId,EncodedPixels ab12\n\"", max_size=100).map(str.encode),
                      st.binary(max_size=100)))  # fmt: skip
def test_dataset_folder_train_csv(data):
    """``scan`` and each image's masks (decoded at the image's 8 x 8): the masks, or one
    ``ValueError`` naming train.csv (with its line where a row is wrong)."""
    from common.io.folder import scan
    from common.io.images import write_png

    with tempfile.TemporaryDirectory() as tmp, bounded():
        root = Path(tmp)
        for image_id in ("a", "b"):
            write_png(root / "train" / "images" / f"{image_id}.png", np.zeros((8, 8), np.uint8))
        path = _write(root, "train.csv", data)
        try:
            folder = scan(root)
            masks = [folder.read_masks(i, (8, 8)) for i in folder.train]
        except ValueError as error:
            assert str(path) in str(error) or str(root) in str(error)
            return
    assert all(m.shape == (len(folder.classes), 8, 8) and m.max(initial=0) <= 1 for m in masks)


@pytest.fixture(scope="module")
def image_bytes():
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (24, 20, 3), np.uint8)
    mask = (rng.random((24, 20)) > 0.5).astype(np.uint8) * 255
    return {name: cv2.imencode(ext, array)[1].tobytes()
            for name, ext, array in (("image.png", ".png", image), ("image.jpg", ".jpg", image),
                                     ("mask.png", ".png", mask))}  # fmt: skip


@pytest.mark.parametrize("name", ["image.png", "image.jpg", "mask.png"])
def test_mutated_images_and_masks(image_bytes, name):
    from common.io.folder import binary_or_classes, mask_values, read_image

    @FILES
    @given(data=_flips(image_bytes[name]))
    def run(data):
        with tempfile.TemporaryDirectory() as tmp, bounded():
            path = _write(Path(tmp), name, data)
            try:
                if name == "mask.png":
                    out = binary_or_classes(mask_values(path), path, None)
                else:
                    out = read_image(path)
            except ValueError as error:
                assert str(path) in str(error)
                return
        assert out.dtype == np.uint8 and out.ndim in (2, 3)

    run()
