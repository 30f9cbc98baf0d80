import json

import pytest
import torch

from openrecog.config import load_config
from openrecog.train import Trainer
from openrecog.train.checkpoint import list_checkpoints, load_checkpoint


def tiny_config(root, tmp_path, **extra):
    overrides = [
        "model.backbone=lcnet_050",
        "model.pretrained=false",
        "model.image_size=64",
        "model.embedding_dim=32",
        "data.source=folder",
        f"data.root={root}",
        "data.images_per_class=2",
        "train.batch_size=8",
        "train.max_steps=6",
        "train.schedule=cosine",
        "train.checkpoint_every=3",
        "train.keep_checkpoints=5",
        "train.log_every=1",
        "train.progress=false",
        f"train.output_dir={tmp_path}",
        "eval.source=none",
        "loss.sample_rate=0.5",
    ]
    return load_config(None, overrides + [f"{k}={v}" for k, v in extra.items()])


def _losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def test_resume_gives_the_same_next_losses(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(pattern_folder, tmp_path, **{"train.name": "full"})
    full = Trainer(cfg).fit()
    assert full.steps == 6
    checkpoints = list_checkpoints(full.run_dir / "checkpoints")
    assert [p.name for p in checkpoints] == ["step_00000003", "step_00000006"]

    resumed = Trainer(cfg, run_dir=tmp_path / "resumed", resume=str(checkpoints[0]))
    assert resumed.step == 3
    resumed.fit()
    expected, got = _losses(full.run_dir), _losses(tmp_path / "resumed")
    assert [got[s] for s in (4, 5, 6)] == [expected[s] for s in (4, 5, 6)]
    final_a = load_checkpoint(checkpoints[1])["model"]
    final_b = load_checkpoint(list_checkpoints(tmp_path / "resumed" / "checkpoints")[-1])["model"]
    for key in final_a:
        torch.testing.assert_close(final_a[key], final_b[key], rtol=0, atol=0)


def test_resume_true_uses_newest_checkpoint(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(pattern_folder, tmp_path, **{"train.name": "r", "train.max_steps": 3})
    Trainer(cfg).fit()
    longer = cfg.model_copy(deep=True)
    longer.train.max_steps = 5
    trainer = Trainer(longer, resume=True)
    assert trainer.step == 3
    assert trainer.fit().steps == 5


def test_resume_without_checkpoint_is_clear(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(pattern_folder, tmp_path, **{"train.name": "none"})
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        Trainer(cfg, resume=True)


def test_run_folder_contents(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(
        pattern_folder,
        tmp_path,
        **{
            "train.name": "eval",
            "eval.source": "folder",
            "eval.root": str(pattern_folder),
            "train.max_steps": 4,
            "eval.every": 2,
        },
    )
    result = Trainer(cfg).fit()
    for name in ("config.yaml", "log.jsonl", "best/config.json", "last/weights.safetensors"):
        assert (result.run_dir / name).exists(), name
    assert list((result.run_dir / "tensorboard").iterdir())
    assert 0.0 <= result.best_metrics["map@5"] <= 1.0
    assert [h["step"] for h in result.history] == [2, 4]  # final step not evaluated twice


@pytest.mark.parametrize(
    "options",
    [
        {"train.autocast": "bf16"},
        {"train.matmul_precision": "medium"},
        {"train.optimizer": "sgd", "loss.name": "arcface"},
        {"loss.name": "softmax", "loss.sample_rate": 1.0},
    ],
)
def test_training_options_run(pattern_folder, tmp_path, options) -> None:
    cfg = tiny_config(pattern_folder, tmp_path, **{"train.max_steps": 2, **options})
    before = torch.get_float32_matmul_precision()
    assert Trainer(cfg).fit().steps == 2
    assert torch.get_float32_matmul_precision() == before  # global setting restored


def test_instance_as_class_trains_one_class_per_image(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(
        pattern_folder,
        tmp_path,
        **{"data.instance_as_class": True, "data.views_per_instance": 4, "train.max_steps": 2},
    )
    trainer = Trainer(cfg)
    assert trainer.head.num_local == 24  # 6 classes x 4 images, each its own class
    batch = next(iter(trainer.sampler))
    assert len(batch) == 8 and len({i for i, _ in batch}) == 2  # 2 images x 4 views
    assert len({s for _, s in batch}) == 8  # every view its own augmentation seed
    assert trainer.fit().steps == 2
