"""common.config: base inheritance, overrides, validation errors, the saved resolved config."""

from __future__ import annotations

import pytest
import yaml

from common.config import ConfigError, load_config, save_config
from tests.conftest import REPO

SIIM_CONFIGS = REPO / "competitions" / "siim" / "configs"


def _write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def chain(tmp_path):
    _write(
        tmp_path / "base.yaml",
        "seed: 1\ntrain: {epochs: 10, lr: 0.001, amp: none}\nmodel: {name: unet, params: {}}\n"
        "tags: []\nweights: null\n",
    )
    _write(tmp_path / "mid.yaml", "base: base.yaml\ntrain: {epochs: 20}\n")
    return _write(tmp_path / "exp.yaml", "base: mid.yaml\ntrain: {lr: 3e-4}\nseed: 7\n")


def test_inheritance_and_precedence(chain):
    config = load_config(chain)
    assert (config.seed, config.train.epochs, config.train.lr) == (7, 20, 3e-4)
    assert config.train.amp == "none" and config.model.name == "unet"
    overridden = load_config(chain, ["train.epochs=3", "model.params.depth=4", "tags=[a, b]"])
    assert overridden.train.epochs == 3 and overridden.model.params == {"depth": 4}
    assert overridden.tags == ["a", "b"] and overridden.train.lr == 3e-4
    assert load_config(chain, ["weights=/x/y.pt"]).weights == "/x/y.pt"
    assert load_config(chain, ["train.lr=1"]).train.lr == 1.0  # int accepted for a float


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epoch=3"], r"unknown key 'train.epoch'; valid keys here: amp, epochs, lr"),
        (["trian.epochs=3"], r"unknown key 'trian'"),
        (["train.epochs=many"], r"'train.epochs' must be int .* got str 'many'"),
        (["train.epochs=2.5"], r"'train.epochs' must be int"),
        (["train=3"], r"'train' must be a mapping"),
        (["seed"], r"expected key.sub=value"),
        (["train.amp=true"], r"'train.amp' must be str"),
    ],
)
def test_bad_overrides_name_the_key(chain, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(chain, overrides)


def test_bad_files(tmp_path, chain):
    with pytest.raises(ConfigError, match=r"unknown key 'train\.epohcs'"):
        load_config(_write(tmp_path / "typo.yaml", "base: base.yaml\ntrain: {epohcs: 2}\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="loops"):
        _write(tmp_path / "a.yaml", "base: b.yaml\n")
        load_config(_write(tmp_path / "b.yaml", "base: a.yaml\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path / "bad.yaml", "train: {epochs: [\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(_write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match=r"typo\.yaml"):
        load_config(tmp_path / "typo.yaml")


def test_resolved_config_round_trips(tmp_path, chain):
    config = load_config(chain, ["train.epochs=5"])
    save_config(config, tmp_path / "resolved.yaml")
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text()) == config.to_dict()
    assert load_config(tmp_path / "resolved.yaml", schema=config.to_dict()) == config


def test_every_siim_config_resolves():
    for path in sorted(SIIM_CONFIGS.glob("*.yaml")):
        config = load_config(path)
        assert config.data.size >= 64 and config.optim.lr > 0, path.name
