import pytest

from openrecog.config import ConfigError, load_config, parse_overrides


def test_overrides_are_typed_and_nested() -> None:
    assert parse_overrides(["train.epochs=3", "model.neck=gap", "loss.s=30.5"]) == {
        "train": {"epochs": 3},
        "model": {"neck": "gap"},
        "loss": {"s": 30.5},
    }


def test_yaml_plus_overrides(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 2\n  lr: 0.01\nmodel:\n  embedding_dim: 128\n")
    cfg = load_config(path, ["train.epochs=5"])
    assert cfg.train.epochs == 5
    assert cfg.train.lr == 0.01
    assert cfg.model.embedding_dim == 128


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epoch=3"], "train.epoch: unknown key"),
        (["train.epochs=many"], "train.epochs"),
        (["model.neck=pool"], "model.neck"),
        (["loss.sample_rate=0"], "loss.sample_rate"),
        (["nonsense"], "section.key=value"),
    ],
)
def test_bad_keys_and_values_are_one_line_errors(overrides, message) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as info:
        load_config(None, overrides)
    assert "\n" not in str(info.value)


def test_missing_and_malformed_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listy)


def test_shipped_configs_validate() -> None:
    from pathlib import Path

    root = Path(__file__).parents[1]
    configs = sorted((root / "configs").glob("*.yaml"))
    configs += sorted((root / "src" / "openrecog" / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    from openrecog.train.crossmodal import load_crossmodal_config

    for path in configs:
        # Cross-modal runs have their own (flat) schema.
        (load_crossmodal_config if path.stem.startswith("crossmodal") else load_config)(path)
