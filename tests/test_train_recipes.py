"""Distillation, LP-FT, extra instance folders and init_from in the Trainer."""

import json

import pytest
import torch

from openrecog.config import DistillConfig, ModelConfig
from openrecog.models import create_model, create_model_from_trained, save_artifact
from openrecog.train import Trainer
from openrecog.train.distill import FrozenTeacher, build_distillation, distillation_loss
from openrecog.train.trainer import spread_indices

from .test_trainer import tiny_config


def _log(run_dir):
    return [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]


def _teacher_artifact(tmp_path):
    teacher = create_model(
        ModelConfig(backbone="lcnet_050", pretrained=False, image_size=64, embedding_dim=48)
    )
    return save_artifact(teacher.eval(), tmp_path / "teacher")


def test_distillation_loss_values() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[3.0, 0.0], [2.0, 0.0]])
    # cos = 1 for the first pair, 0 for the second: mean(1 - cos) = 0.5
    assert distillation_loss(a, b, "cosine").item() == pytest.approx(0.5)
    # normalised: identical, then orthogonal unit vectors (squared distance 2)
    assert distillation_loss(a, b, "mse").item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown distillation kind"):
        distillation_loss(a, b, "l1")


def test_relation_distillation_matches_hand_computation() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 8), torch.randn(5, 12)  # dimensions may differ

    def rows(x, t):
        c = torch.nn.functional.normalize(x - x.mean(0), dim=1)
        sims = c @ c.T
        return [
            torch.log_softmax(torch.cat([sims[i, :i], sims[i, i + 1 :]]) / t, 0) for i in range(5)
        ]

    for t in (0.1, 0.5):
        expected = (
            sum(
                (lt.exp() * (lt - ls)).sum()
                for ls, lt in zip(rows(student, t), rows(teacher, t), strict=True)
            )
            / 5
        )
        got = distillation_loss(student, teacher, "relation", temperature=t)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # 0.1 is the default temperature of kind=relation.
    assert distillation_loss(student, teacher, "relation").item() == pytest.approx(
        distillation_loss(student, teacher, "relation", temperature=0.1).item()
    )
    # Only the geometry counts: a rotated, scaled, shifted copy of the teacher costs nothing.
    rotation, _ = torch.linalg.qr(torch.randn(12, 12))
    same_geometry = 3.0 * teacher @ rotation + 7.0
    assert distillation_loss(same_geometry, teacher, "relation").item() == pytest.approx(
        0, abs=1e-6
    )
    # Too few images for a neighbour distribution: zero, and backward still works.
    pair = torch.randn(2, 8, requires_grad=True)
    loss = distillation_loss(pair, torch.randn(2, 12), "relation")
    loss.backward()
    assert loss.item() == 0.0 and pair.grad is not None


def test_teacher_sees_the_view_in_its_own_normalisation(tmp_path) -> None:
    teacher_model = create_model(
        ModelConfig(
            backbone="lcnet_050",
            pretrained=False,
            image_size=64,
            embedding_dim=16,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
        )
    ).eval()
    teacher = FrozenTeacher(teacher_model, [0.5] * 3, [0.5] * 3, image_size=48)
    raw = torch.rand(2, 3, 64, 64)
    student_view = (raw - 0.5) / 0.5
    expected = teacher_model.forward_unnormalized(
        torch.nn.functional.interpolate(raw, size=(48, 48), mode="bilinear", antialias=True)
    )
    torch.testing.assert_close(teacher(student_view), expected, rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in teacher_model.parameters())


def test_no_teacher_means_no_distillation() -> None:
    student = create_model(ModelConfig(backbone="lcnet_050", pretrained=False, image_size=64))
    assert build_distillation(DistillConfig(), student, [0.5] * 3, [0.5] * 3) is None


@pytest.mark.parametrize("kind", ["cosine", "relation"])
def test_distillation_trains_and_resumes(kind, pattern_folder, tmp_path) -> None:
    teacher = _teacher_artifact(tmp_path)
    cfg = tiny_config(
        pattern_folder,
        tmp_path,
        **{
            "train.name": "kd",
            "distill.teacher": str(teacher),
            "distill.kind": kind,
            "distill.weight": 2.0,
        },
    )
    trainer = Trainer(cfg)
    if kind == "relation":  # compares similarities: nothing to project
        assert isinstance(trainer.distill_proj, torch.nn.Identity)
    else:
        assert trainer.distill_proj.weight.shape == (48, 32)
        before = trainer.distill_proj.weight.detach().clone()
    result = trainer.fit()
    if kind != "relation":
        assert not torch.equal(before, trainer.distill_proj.weight)
    steps = [r for r in _log(result.run_dir) if "loss/distill" in r]
    assert len(steps) == 6
    for record in steps:
        assert record["loss/distill"] > 0
        expected = record["loss/margin"] + 2.0 * record["loss/distill"]
        assert record["loss"] == pytest.approx(expected, rel=1e-5)
    resumed = Trainer(
        cfg,
        run_dir=tmp_path / "kd2",
        resume=str(result.run_dir / "checkpoints" / "step_00000003"),
    )
    assert resumed.step == 3


def test_frozen_backbone_steps_leave_backbone_untouched(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(
        pattern_folder,
        tmp_path,
        **{"train.name": "lp", "train.freeze_backbone_steps": 3, "train.max_steps": 3},
    )
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    neck_before = trainer.model.neck.fc.weight.detach().clone()
    trainer.fit()
    for key, value in trainer.model.backbone.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert not torch.equal(neck_before, trainer.model.neck.fc.weight)
    # After the frozen phase the backbone trains.
    longer = cfg.model_copy(deep=True)
    longer.train.max_steps = 5
    trainer = Trainer(longer, resume=True)
    trainer.fit()
    changed = any(
        not torch.equal(v, before[k]) for k, v in trainer.model.backbone.state_dict().items()
    )
    assert changed


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_stats_keeps_running_statistics_and_trains_the_rest(
    pattern_folder, tmp_path, freeze
) -> None:
    cfg = tiny_config(
        pattern_folder,
        tmp_path,
        **{"train.name": f"bn{freeze}", "train.freeze_bn_stats": freeze, "train.max_steps": 2},
    )
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    trainer.fit()
    after = trainer.model.backbone.state_dict()
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    weights = [k for k in before if k not in stats and not k.endswith("num_batches_tracked")]
    assert stats and weights
    kept = [torch.equal(after[k], before[k]) for k in stats]
    assert all(kept) if freeze else not any(kept)
    assert any(not torch.equal(after[k], before[k]) for k in weights)
    # The neck's BatchNorm is not the backbone's: it still learns its statistics.
    assert trainer.model.neck.norm[1].num_batches_tracked.item() > 0


def test_extra_folders_add_one_class_per_image(pattern_folder, tmp_path) -> None:
    extra = tmp_path / "extra"
    (extra / "a").mkdir(parents=True)
    for i, src in enumerate(sorted(pattern_folder.rglob("*.png"))[:5]):
        (extra / "a" / f"img{i}.png").write_bytes(src.read_bytes())
    cfg = tiny_config(
        pattern_folder, tmp_path, **{"train.name": "mix", "data.extra_folders": [str(extra)]}
    )
    trainer = Trainer(cfg)
    base_classes = len(trainer.train_base.parts[0].class_names)
    assert len(trainer.train_base.class_names) == base_classes + 5
    assert trainer.train_base.class_names[-1] == "a/img4.png"
    image, label = trainer.train_base[len(trainer.train_base) - 1]
    assert label == base_classes + 4
    trainer.fit()


def test_missing_extra_folder_is_clear(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(pattern_folder, tmp_path, **{"data.extra_folders": [str(tmp_path / "nope")]})
    with pytest.raises(ValueError, match="extra training folder not found"):
        Trainer(cfg)


def test_init_from_copies_weights_and_architecture(pattern_folder, tmp_path) -> None:
    source = _teacher_artifact(tmp_path)
    cfg = tiny_config(pattern_folder, tmp_path, **{"train.name": "ft"})
    cfg = cfg.model_copy(update={"model": ModelConfig(init_from=str(source))})
    trainer = Trainer(cfg)
    assert trainer.model.embedding_dim == 48
    assert trainer.config.model.backbone == "lcnet_050"
    reference = create_model_from_trained(ModelConfig(init_from=str(source)))
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(trainer.model.state_dict()[key], value)


def test_init_from_conflict_is_clear(tmp_path) -> None:
    source = _teacher_artifact(tmp_path)
    with pytest.raises(ValueError, match="embedding_dim=32"):
        create_model_from_trained(ModelConfig(init_from=str(source), embedding_dim=32))


def test_neck_init_from_pca_gives_orthogonal_projection(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(
        pattern_folder,
        tmp_path,
        **{
            "train.name": "pca",
            "model.neck": "gap",
            "model.embedding_dim": 16,
            "train.neck_init_images": 20,
        },
    )
    trainer = Trainer(cfg)
    assert trainer.neck_init["images"] == 20
    weight = trainer.model.neck.fc.weight.detach()
    gram = weight @ weight.T
    # Rows are principal axes scaled by one common factor: orthogonal, equal norms.
    torch.testing.assert_close(gram / gram[0, 0], torch.eye(16), rtol=0, atol=1e-3)
    with pytest.raises(ValueError, match="needs model.neck=gap"):
        Trainer(
            tiny_config(
                pattern_folder,
                tmp_path,
                **{"train.neck_init_images": 20, "model.neck": "squeeze"},
            )
        )


def test_neck_init_whiten_gives_unit_variance_axes(pattern_folder, tmp_path) -> None:
    overrides = {
        "model.neck": "gap",
        "model.norm": "none",
        "model.embedding_dim": 16,
        "train.neck_init_images": 40,
    }
    plain = Trainer(tiny_config(pattern_folder, tmp_path, **overrides, **{"train.name": "p"}))
    whitened = Trainer(
        tiny_config(
            pattern_folder,
            tmp_path,
            **overrides,
            **{"train.name": "w", "train.neck_init_whiten": True},
        )
    )
    # The same images and axes: whitening only rescales the PCA start's rows, each by
    # 1 / (its axis' spread), and the axes come sorted by decreasing variance.
    w_plain = plain.model.neck.fc.weight.detach()
    w_white = whitened.model.neck.fc.weight.detach()
    torch.testing.assert_close(
        torch.nn.functional.normalize(w_plain, dim=1),
        torch.nn.functional.normalize(w_white, dim=1),
        rtol=0,
        atol=1e-4,
    )
    scale = w_white.norm(dim=1) / w_plain.norm(dim=1)
    assert torch.all(scale[1:] >= scale[:-1] * (1 - 1e-4))
    assert scale[-1] > 1.5 * scale[0]
    torch.testing.assert_close(
        whitened.model.neck.fc.bias.detach(), plain.model.neck.fc.bias.detach() * scale
    )


def test_neck_init_whiten_needs_the_pca_start(pattern_folder, tmp_path) -> None:
    with pytest.raises(ValueError, match="set neck_init_images"):
        tiny_config(pattern_folder, tmp_path, **{"train.neck_init_whiten": True})


def test_initial_teacher_is_the_start_of_the_run(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(
        pattern_folder,
        tmp_path,
        **{
            "train.name": "lwf",
            "model.neck": "gap",
            "model.norm": "none",  # a train-mode BatchNorm would differ from the frozen copy
            "model.embedding_dim": 16,
            "train.neck_init_images": 20,
            "train.freeze_backbone_steps": 4,
            "distill.teacher": "initial",
            "distill.kind": "relation",
        },
    )
    trainer = Trainer(cfg)
    assert isinstance(trainer.distill_proj, torch.nn.Identity)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    # The teacher is the model after the PCA start, not before it.
    for key, value in trainer.teacher.model.state_dict().items():
        torch.testing.assert_close(value, start[key], rtol=0, atol=0)
    result = trainer.fit()
    neck_key = "neck.fc.weight"
    assert not torch.equal(trainer.model.state_dict()[neck_key], start[neck_key])
    torch.testing.assert_close(trainer.teacher.model.state_dict()[neck_key], start[neck_key])
    distill = [r["loss/distill"] for r in _log(result.run_dir) if "loss/distill" in r]
    # The student starts as the teacher (zero loss), then trains away from it, through
    # both the shared-trunk shortcut (steps 0-3) and the full teacher pass (4-5).
    assert len(distill) == 6
    assert distill[0] == pytest.approx(0.0, abs=1e-4)
    assert max(distill) > 1e-4
    resumed = Trainer(
        cfg,
        run_dir=tmp_path / "lwf2",
        resume=str(result.run_dir / "checkpoints" / "step_00000003"),
    )
    torch.testing.assert_close(
        resumed.teacher.model.state_dict()[neck_key], start[neck_key], rtol=0, atol=0
    )


def test_initial_teacher_shortcut_matches_the_full_pass(tmp_path) -> None:
    student = create_model(
        ModelConfig(backbone="lcnet_050", pretrained=False, image_size=64, embedding_dim=16)
    ).eval()
    teacher, _ = build_distillation(
        DistillConfig(teacher="initial", kind="relation"), student, [0.5] * 3, [0.5] * 3
    )
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        features = student.forward_features(images)
    # Not bit-equal: the full pass re-normalises the views (to the same mean and std).
    torch.testing.assert_close(
        teacher.from_features(features), teacher(images), rtol=1e-4, atol=1e-4
    )


def test_initial_teacher_rejects_logit_distillation(pattern_folder, tmp_path) -> None:
    with pytest.raises(ValueError, match="not class logits"):
        tiny_config(
            pattern_folder, tmp_path, **{"distill.teacher": "initial", "distill.kind": "kl"}
        )


def test_pca_start_samples_the_whole_training_set() -> None:
    # 2000 documents then 796 objects: 1000 images must reach into the objects' block.
    picked = spread_indices(2796, 1000)
    assert len(picked) == len(set(picked)) == 1000
    assert picked[0] == 0 and picked[-1] == 2795
    assert sum(i >= 2000 for i in picked) == pytest.approx(1000 * 796 / 2796, abs=2)
    assert spread_indices(5, 10) == [0, 1, 2, 3, 4]
