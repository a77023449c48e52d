"""`make submit`: validation first; without credentials, without a network or for the synthetic
set it fails with one clear line, exit 1, and changes nothing; no credential is printed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common.submit.kaggle import has_credentials
from tests.conftest import REPO

SECRET = "not-a-real-token-123"


@pytest.fixture
def files(tmp_path):
    sample = tmp_path / "data" / "siim" / "synthetic" / "sample_submission.csv"
    sample.parent.mkdir(parents=True)
    sample.write_text("ImageId,EncodedPixels\nid_a,-1\nid_b,-1\n")
    csv = tmp_path / "sub.csv"
    csv.write_text("ImageId,EncodedPixels\nid_a,-1\nid_b,10 5\n")
    return tmp_path, sample, csv


def _submit(cwd, *args, **env):
    clean = {"PATH": os.environ["PATH"], "HOME": str(cwd / "home"), "PYTHONPATH": str(REPO)}
    clean["KSEG_WORKSPACE"] = str(cwd)  # its data/siim/ is the one searched
    result = subprocess.run(
        [sys.executable, "-m", "common.cli", "submit", "--competition", "siim", *args],
        cwd=cwd, env=clean | env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr.strip()


def test_no_credentials_is_one_line(files):
    cwd, sample, csv = files
    before = csv.read_bytes()
    code, out, err = _submit(cwd, "--csv", str(csv), "--sample", str(sample))
    assert code == 1 and "valid against" in out
    assert err.startswith("siim submit: no Kaggle credentials") and "\n" not in err
    assert csv.read_bytes() == before


def test_no_network_is_one_line_without_the_token(files):
    cwd, sample, csv = files
    proxy = "http://127.0.0.1:9"  # nothing listens: the request fails at once
    code, out, err = _submit(
        cwd, "--csv", str(csv), "--sample", str(sample),
        KAGGLE_API_TOKEN=SECRET, HTTPS_PROXY=proxy, HTTP_PROXY=proxy,
    )  # fmt: skip
    assert code == 1 and err.startswith("siim submit: submission failed") and "\n" not in err
    assert SECRET not in out + err


def test_synthetic_csv_is_not_submitted(files):
    cwd, _, csv = files
    code, _, err = _submit(cwd, "--csv", str(csv), KAGGLE_API_TOKEN=SECRET)
    assert code == 1 and "synthetic test set" in err and SECRET not in err


def test_invalid_csv_is_listed_and_not_submitted(files):
    cwd, sample, csv = files
    csv.write_text("ImageId,EncodedPixels\nid_a,-1\nid_a,-1\n")
    code, out, err = _submit(cwd, "--csv", str(csv), "--sample", str(sample))
    assert code == 1 and "repeats line 2" in err and "missing" in err and not out


def test_credential_places(tmp_path):
    assert not has_credentials({"HOME": str(tmp_path)})
    assert has_credentials({"HOME": str(tmp_path), "KAGGLE_API_TOKEN": "x"})
    assert has_credentials({"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"})
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text("{}")
    assert has_credentials({"HOME": str(tmp_path)})
