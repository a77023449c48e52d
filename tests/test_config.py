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


LUNG_CONFIGS = REPO / "competitions" / "lung" / "configs"


def test_competitions_extend_the_one_generic_schema(tmp_path):
    from common.config import common_schema
    from common.train.training import Settings

    generic = common_schema()
    for base in (SIIM_CONFIGS / "base.yaml", LUNG_CONFIGS / "base.yaml"):
        config = load_config(base).to_dict()
        for section in ("model", "loss", "optim", "sched", "train"):
            assert set(config[section]) == set(generic[section]), (base, section)
    assert load_config(LUNG_CONFIGS / "base.yaml").data.structures[0] == "left_lung"
    # Settings is built from the schema's train section: no key of a config is left out
    assert set(Settings.__dataclass_fields__) == set(generic["train"])
    settings = Settings(**load_config(SIIM_CONFIGS / "base.yaml").train)
    assert settings.monitor == "dice_triplet" and settings.parts == []


def test_a_competition_base_adds_keys_only_where_allowed(tmp_path):
    base = _write(
        tmp_path / "base.yaml",
        'base: "@common/experiment.yaml"\ndata: {stain: pas}\nextra: {k: 1}\n',
    )
    config = load_config(base, ["data.stain=he", "extra.k=2"])
    assert config.data.stain == "he" and config.extra.k == 2 and config.train.epochs == 10
    with pytest.raises(ConfigError, match=r"unknown key 'data\.stian'"):
        load_config(base, ["data.stian=x"])
    typo = _write(tmp_path / "typo.yaml", 'base: "@common/experiment.yaml"\ntrain: {epohcs: 2}\n')
    with pytest.raises(
        ConfigError, match=r"unknown key 'train\.epohcs'.*valid keys here: .*epochs"
    ):
        load_config(typo)
    wrong = _write(tmp_path / "wrong.yaml", 'base: "@common/experiment.yaml"\noptim: {lr: fast}\n')
    with pytest.raises(ConfigError, match=r"'optim\.lr' must be float"):
        load_config(wrong)
    exp = _write(tmp_path / "exp.yaml", "base: base.yaml\ndata: {newkey: 1}\n")
    with pytest.raises(ConfigError, match=r"exp\.yaml: unknown key 'data\.newkey'"):
        load_config(exp)


def test_every_lung_config_resolves():
    for path in sorted(LUNG_CONFIGS.glob("*.yaml")):
        config = load_config(path)
        assert config.data.in_channels == 1 and config.data.score_size == 512, path.name
