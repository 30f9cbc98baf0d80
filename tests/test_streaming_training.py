"""Training from webdataset shards (data.source=shards) and the `openrecog shards` command."""

import json

import pytest
from typer.testing import CliRunner

from openrecog.cli.main import app
from openrecog.config import load_config
from openrecog.train import Trainer
from openrecog.train.checkpoint import list_checkpoints

runner = CliRunner()


def shard_config(shards, tmp_path, **extra):
    overrides = {
        "model.backbone": "lcnet_050",
        "model.pretrained": "false",
        "model.image_size": 64,
        "model.embedding_dim": 32,
        "data.source": "shards",
        "data.root": shards,
        "data.views_per_instance": 2,
        "data.shuffle_buffer": 8,
        "train.batch_size": 8,
        "train.max_steps": 4,
        "train.schedule": "cosine",
        "train.checkpoint_every": 2,
        "train.log_every": 1,
        "train.progress": "false",
        "train.output_dir": tmp_path,
        "eval.source": "none",
        **extra,
    }
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture
def shards(pattern_folder, tmp_path):
    out = tmp_path / "shards"
    result = runner.invoke(app, ["shards", str(pattern_folder), str(out), "--max-count", "10"])
    assert result.exit_code == 0, result.output
    assert "24 images of 6 classes in 3 shards" in result.output
    return out


def test_train_from_shards_streams_and_checkpoints(shards, tmp_path):
    trainer = Trainer(shard_config(shards, tmp_path, **{"train.name": "stream"}))
    assert trainer.num_train_classes == 6 and trainer.head.num_classes == 6
    assert trainer.steps_per_epoch == 24 * 2 // 8
    result = trainer.fit()
    assert result.steps == 4
    losses = [json.loads(x) for x in (result.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in losses if "loss" in r] == [1, 2, 3, 4]
    assert [p.name for p in list_checkpoints(result.run_dir / "checkpoints")] == [
        "step_00000002",
        "step_00000004",
    ]
    # Resume continues the step count on a fresh (differently seeded) stream.
    longer = shard_config(shards, tmp_path, **{"train.name": "stream", "train.max_steps": 6})
    resumed = Trainer(longer, resume=True)
    assert resumed.step == 4
    assert resumed.fit().steps == 6


def test_shards_refuse_options_that_need_a_listed_dataset(shards, tmp_path):
    with pytest.raises(ValueError, match="data.class_sampling_power"):
        Trainer(shard_config(shards, tmp_path, **{"data.class_sampling_power": 0.5}))
    with pytest.raises(ValueError, match="multiple of"):
        Trainer(shard_config(shards, tmp_path, **{"train.batch_size": 9}))


def test_shards_command_reports_bad_input(tmp_path):
    result = runner.invoke(app, ["shards", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output
