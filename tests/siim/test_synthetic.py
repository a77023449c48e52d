"""The synthetic SIIM set: Kaggle layout and quirks, readable DICOMs, determinism, idempotence."""

from __future__ import annotations

import filecmp

import numpy as np
import pydicom
import pytest

from common.io.dicom import find_dicoms, read_dicom
from common.io.rle_csv import merged_masks, read_rle_csv
from competitions.siim.synthetic import SyntheticSpec, _case, generate

SPEC = SyntheticSpec(size=96, n_train=90, n_test=20, seed=5)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("siim") / "synthetic", SPEC)


def test_layout_and_csv_quirks(synthetic):
    assert sorted(p.name for p in synthetic.iterdir()) == [
        "dicom-images-test",
        "dicom-images-train",
        "manifest.json",
        "sample_submission.csv",
        "test-rle.csv",
        "train-rle.csv",
    ]
    text = (synthetic / "train-rle.csv").read_text()
    assert text.startswith("ImageId, EncodedPixels\n") and ", -1\n" in text
    train = find_dicoms(synthetic / "dicom-images-train")
    assert len(train) == SPEC.n_train
    assert all(
        len(p.relative_to(synthetic / "dicom-images-train").parts) == 3 for p in train.values()
    )
    annotations = read_rle_csv(synthetic / "train-rle.csv")
    assert set(annotations["ImageId"]) == set(train)
    masks = merged_masks(annotations, shape=(SPEC.size, SPEC.size))
    rate = np.mean([m.any() for m in masks.values()])
    assert 0.1 < rate < 0.35
    assert (annotations["ImageId"].value_counts() > 1).any()  # some positives on several rows
    sample = read_rle_csv(synthetic / "sample_submission.csv")
    test = find_dicoms(synthetic / "dicom-images-test")
    assert list(sample["ImageId"]) == sorted(sample["ImageId"], key=list(sample["ImageId"]).index)
    assert (
        set(sample["ImageId"])
        == set(test)
        == set(read_rle_csv(synthetic / "test-rle.csv")["ImageId"])
    )
    assert (sample["EncodedPixels"] == "-1").all()


def test_dicoms_are_real_and_varied(synthetic):
    paths = list(find_dicoms(synthetic / "dicom-images-train").values())
    datasets = [pydicom.dcmread(p) for p in paths]
    syntaxes = {ds.file_meta.TransferSyntaxUID for ds in datasets}
    assert syntaxes == {pydicom.uid.JPEGBaseline8Bit, pydicom.uid.ExplicitVRLittleEndian}
    assert {ds.PhotometricInterpretation for ds in datasets} == {"MONOCHROME1", "MONOCHROME2"}
    for ds, path in zip(datasets, paths, strict=True):
        assert ds.SOPInstanceUID == path.stem and ds.Modality == "CR"
        assert (
            ds.PatientSex in ("M", "F")
            and ds.ViewPosition in ("PA", "AP")
            and ds.PatientAge.endswith("Y")
        )
        image = read_dicom(path)
        assert image.shape == (SPEC.size, SPEC.size) and image.std() > 10


def test_pneumothorax_is_darker_than_the_rest_of_its_lung(synthetic):
    masks = merged_masks(read_rle_csv(synthetic / "train-rle.csv"), shape=(SPEC.size, SPEC.size))
    paths = find_dicoms(synthetic / "dicom-images-train")
    darker = []
    for image_id, mask in masks.items():
        if mask.sum() >= 20:
            image = read_dicom(paths[image_id]).astype(float)
            ring = (np.roll(mask, 6, axis=1) | np.roll(mask, -6, axis=1)) & ~mask.astype(bool)
            darker.append(image[mask > 0].mean() < image[ring].mean())
    assert np.mean(darker) > 0.6


def test_deterministic_and_idempotent(synthetic, tmp_path):
    again = generate(tmp_path / "again", SPEC)
    assert filecmp.cmp(synthetic / "train-rle.csv", again / "train-rle.csv", shallow=False)
    before = (again / "manifest.json").stat().st_mtime_ns
    generate(again, SPEC)  # same spec: nothing is rewritten
    assert (again / "manifest.json").stat().st_mtime_ns == before
    other = generate(tmp_path / "again", SyntheticSpec(size=64, n_train=10, n_test=4, seed=1))
    assert len(find_dicoms(other / "dicom-images-train")) == 10
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no build folder left behind


def test_pneumothorax_sizes_range_from_tiny_to_large():
    spec = SyntheticSpec()  # the default 256x256
    sizes = []
    for index in range(150):
        case = _case(spec, index, positive=True)
        assert case.annotations
        sizes.append(np.logical_or.reduce(case.annotations).mean())
    assert min(sizes) < 0.001 and max(sizes) > 0.04


@pytest.mark.parametrize(
    ("field", "value"), [("size", 0), ("size", 32), ("n_train", 0), ("n_test", -1), ("seed", -3)]
)
def test_bad_spec_is_refused(field, value):
    with pytest.raises(ValueError, match=f"synthetic dataset: {field} must be an integer"):
        SyntheticSpec(**{field: value})
