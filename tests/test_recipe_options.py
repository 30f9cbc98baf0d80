"""Each training option of the recipes (GUIE, USI, CP2) changes what the trainer computes."""

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openrecog.config import LossConfig, TrainConfig, load_config
from openrecog.data.datasets import folder_dataset
from openrecog.data.samplers import ClassBalancedBatchSampler
from openrecog.train import Trainer
from openrecog.train.distill import distillation_loss, load_classifier_teacher
from openrecog.train.mixing import mix_batch
from openrecog.train.schedule import margin_at, phase_at, resolve_stages

from .test_trainer import tiny_config


def _gap(root, tmp_path, **extra):
    return tiny_config(root, tmp_path, **{"model.neck": "gap", **extra})


# ---------------------------------------------------------------- class balancing
def test_class_sampling_power_follows_class_sizes() -> None:
    labels = [0] * 60 + list(range(1, 31))  # one big class, 30 singletons
    uniform = ClassBalancedBatchSampler(labels, 8, 2, seed=0)
    natural = ClassBalancedBatchSampler(labels, 8, 2, seed=0, class_sampling_power=1.0)

    def class_counts(sampler):
        counts = Counter()
        for epoch in range(20):
            sampler.set_epoch(epoch)
            for batch in sampler:
                counts.update({labels[i] for i, _ in batch})
        return counts

    flat, weighted = class_counts(uniform), class_counts(natural)
    # power 0: every class exactly once per epoch that it is not dropped by drop_last
    assert flat[0] <= 20
    # power 1: the big class holds 60 of 90 images, so it is in almost every batch
    assert weighted[0] > 3 * flat[0]
    for batch in natural:
        classes = [labels[i] for i, _ in batch]
        assert len(set(classes)) == len(classes) // 2  # no class twice in one batch


def test_max_images_per_class_caps_and_is_deterministic(pattern_folder) -> None:
    data = folder_dataset(pattern_folder)
    capped = data.limit_images_per_class(2, seed=0)
    assert set(capped.class_counts().values()) == {2}
    assert capped.paths == data.limit_images_per_class(2, seed=0).paths
    assert capped.class_names == data.class_names


def test_trainer_applies_class_balancing_options(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(
        pattern_folder,
        tmp_path,
        **{"data.max_images_per_class": 3, "data.class_sampling_power": 1.0},
    )
    trainer = Trainer(cfg)
    assert len(trainer.train_base) == 6 * 3
    assert trainer.sampler.class_sampling_power == 1.0


# ---------------------------------------------------------------- mixing
def test_mixup_is_a_convex_combination() -> None:
    images = torch.randn(6, 3, 8, 8)
    labels = torch.arange(6)
    out = mix_batch(images, labels, 0.4, 0.0, 1.0, np.random.default_rng(3))
    assert 0.0 < out.lam < 1.0
    perm = out.labels_b  # labels are 0..5, so labels_b is the permutation itself
    torch.testing.assert_close(out.images, out.lam * images + (1 - out.lam) * images[perm])


def test_cutmix_pastes_a_box_of_the_reported_area() -> None:
    images = torch.zeros(4, 1, 20, 20)
    for i in range(4):
        images[i] = i + 1.0
    out = mix_batch(images, torch.arange(4), 0.0, 1.0, 1.0, np.random.default_rng(0))
    for i in range(4):
        own = (out.images[i] == i + 1.0).float().mean().item()
        if out.labels_b[i] != i:
            assert own == pytest.approx(out.lam)


def test_mixing_off_returns_the_batch_unchanged() -> None:
    images, labels = torch.randn(4, 3, 8, 8), torch.arange(4)
    for args in ((0.0, 0.0, 1.0), (0.5, 0.5, 0.0)):
        out = mix_batch(images, labels, *args, np.random.default_rng(0))
        assert out.images is images and out.lam == 1.0 and not out.mixed


def test_trainer_mixup_changes_the_loss(pattern_folder, tmp_path) -> None:
    plain = Trainer(tiny_config(pattern_folder, tmp_path, **{"train.name": "a"}))
    mixed = Trainer(
        tiny_config(pattern_folder, tmp_path, **{"train.name": "b", "train.mixup_alpha": 0.4})
    )
    images, labels = next(iter(plain._loader(64)))
    assert plain.train_step(images, labels) != pytest.approx(mixed.train_step(images, labels))


# ---------------------------------------------------------------- KL distillation
def test_kl_distillation_matches_hand_computation() -> None:
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    teacher = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    for t in (1.0, 2.0):
        p = F.softmax(teacher / t, dim=-1)
        q = F.log_softmax(student / t, dim=-1)
        expected = (p * (p.log() - q)).sum(dim=-1).mean() * t * t
        got = distillation_loss(student, teacher, "kl", temperature=t)
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert distillation_loss(teacher, teacher, "kl").item() == pytest.approx(0.0, abs=1e-7)


def test_classifier_teacher_gives_imagenet_logits() -> None:
    teacher = load_classifier_teacher("lite0_gap_imagenet")
    assert teacher.num_classes == 1000
    with pytest.raises(ValueError, match="needs an ImageNet classifier"):
        load_classifier_teacher("lcnet_050")


def test_trainer_kl_distillation_uses_a_classifier_projection(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(
        pattern_folder,
        tmp_path,
        **{"distill.teacher": "tf_efficientnet_lite0", "distill.kind": "kl", "distill.weight": 5},
    )
    trainer = Trainer(cfg)
    assert trainer.distill_proj.weight.shape == (1000, 32)
    assert trainer.distill_proj.bias is not None
    images, labels = next(iter(trainer._loader(64)))
    trainer.train_step(images, labels)
    assert trainer.last_losses["loss/distill"] > 0


# ---------------------------------------------------------------- schedules
def test_phases_of_lp_ft_and_alternating_training() -> None:
    tc = TrainConfig(freeze_backbone_steps=2, alternate_steps=3)
    got = [phase_at(tc, s) for s in range(10)]
    assert got == ["head"] * 2 + ["head"] * 3 + ["backbone"] * 3 + ["head"] * 2
    assert phase_at(TrainConfig(), 5) == "joint"


def test_dynamic_margin_grows_to_the_cap() -> None:
    lc = LossConfig(name="arcface", m=0.5, margin_start=0.2, margin_step=0.1, margin_every=2)
    assert [margin_at(lc, 0.5, s, 100) for s in range(0, 10, 2)] == pytest.approx(
        [0.2, 0.3, 0.4, 0.5, 0.5]
    )
    per_epoch = LossConfig(margin_start=0.1)
    assert margin_at(per_epoch, 0.3, 9, 10) == pytest.approx(0.1)
    assert margin_at(per_epoch, 0.3, 10, 10) == pytest.approx(0.15)
    assert margin_at(LossConfig(), 0.3, 5, 10) is None


def test_stages_resolve_in_order() -> None:
    tc = TrainConfig(
        lr=1e-3,
        warmup_steps=2,
        stages=[{"steps": 4, "mixup_alpha": 0.1}, {"steps": 3, "lr": 1e-4, "image_size": 96}],
    )
    first, second = resolve_stages(tc, 64, steps_per_epoch=10)
    assert (first.start, first.end, first.lr, first.image_size) == (0, 4, 1e-3, 64)
    assert (second.start, second.end, second.lr, second.image_size) == (4, 7, 1e-4, 96)
    assert (first.warmup_steps, second.warmup_steps) == (2, 0)
    assert (first.mixup_alpha, second.mixup_alpha) == (0.1, 0.0)


def test_stage_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="need model.neck=gap"):
        load_config(None, ["model.neck=squeeze", "train.stages=[{steps: 2, image_size: 160}]"])
    with pytest.raises(ValueError, match="leave train.max_steps unset"):
        load_config(None, ["train.max_steps=3", "train.stages=[{steps: 2}]"])


def test_onecycle_warms_up_then_anneals(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(
        pattern_folder,
        tmp_path,
        **{"train.schedule": "onecycle", "train.max_steps": 10, "train.lr": 1e-3},
    )
    trainer = Trainer(cfg)
    lrs = []
    for step in range(10):
        trainer.step = step
        trainer._enter_stage()
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-3 / 25)
    peak = int(np.argmax(lrs))
    assert peak == 3 and lrs[peak] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))


# ---------------------------------------------------------------- trainer behaviour
def _batches(trainer: Trainer):
    """Endless training batches (the tiny data set has two batches per epoch)."""
    epoch = 0
    while True:
        trainer.sampler.set_epoch(epoch)
        yield from trainer._loader(trainer.stage.image_size)
        epoch += 1


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return {k: v.detach().clone() for k, v in tensors.items()}


def _changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return any(not torch.equal(v, before[k]) for k, v in _snapshot(module).items())


def test_alternating_training_freezes_one_side_at_a_time(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(pattern_folder, tmp_path, **{"train.alternate_steps": 2, "train.lr": 1e-3})
    trainer = Trainer(cfg)
    batches = _batches(trainer)
    for _ in range(2):  # head phase
        backbone = _snapshot(trainer.model.backbone)
        trainer.train_step(*next(batches))
        assert not _changed(trainer.model.backbone, backbone)
    assert phase_at(cfg.train, trainer.step) == "backbone"
    lr_backbone = [g["lr"] for g in trainer.optimizer.param_groups if g["module"] == "backbone"]
    expected = trainer.scheduler._get_lr(2)[0] * 0.1
    assert lr_backbone[0] == pytest.approx(expected)
    neck, head = _snapshot(trainer.model.neck), _snapshot(trainer.head)
    backbone = _snapshot(trainer.model.backbone)
    trainer.train_step(*next(batches))
    assert _changed(trainer.model.backbone, backbone)
    assert not _changed(trainer.model.neck, neck)  # BN statistics included
    assert not _changed(trainer.head, head)


def test_layer_decay_gives_lower_layers_smaller_lrs(pattern_folder, tmp_path) -> None:
    trainer = Trainer(tiny_config(pattern_folder, tmp_path, **{"train.layer_decay": 0.5}))
    backbone = [g for g in trainer.optimizer.param_groups if g["module"] == "backbone"]
    scales = [g["lr_scale"] for g in backbone]
    assert min(scales) < 0.01 and max(scales) <= 1.0
    lrs = [g["lr"] for g in backbone]
    # No warmup: step 0 runs at train.lr scaled per layer (timm's schedulers apply lr_scale).
    assert lrs == pytest.approx([trainer.config.train.lr * scale for scale in scales])
    assert lrs[0] < lrs[-1]
    stem = trainer.model.backbone.conv_stem.weight
    assert any(stem is p for p in backbone[0]["params"])


def test_dynamic_margin_reaches_the_head(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(
        pattern_folder,
        tmp_path,
        **{
            "loss.name": "arcface",
            "loss.m": 0.5,
            "loss.margin_start": 0.1,
            "loss.margin_step": 0.2,
            "loss.margin_every": 1,
        },
    )
    trainer = Trainer(cfg)
    batches = _batches(trainer)
    seen = []
    for _ in range(4):
        trainer.train_step(*next(batches))
        seen.append(trainer.head.margin_loss.margin)
    assert seen == pytest.approx([0.1, 0.3, 0.5, 0.5])
    with pytest.raises(ValueError, match="needs a margin loss"):
        Trainer(
            tiny_config(
                pattern_folder,
                tmp_path,
                **{"loss.name": "softmax", "loss.sample_rate": 1.0, "loss.margin_start": 0.1},
            )
        )


def test_ema_is_what_gets_evaluated_and_saved(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(pattern_folder, tmp_path, **{"train.ema_decay": 0.9, "train.name": "ema"})
    trainer = Trainer(cfg)
    result = trainer.fit()
    assert trainer.eval_model is trainer.ema.module
    live = trainer.model.neck.fc.weight
    averaged = trainer.ema.module.neck.fc.weight
    assert not torch.equal(live, averaged)
    from openrecog.models import load_model

    saved = load_model(result.run_dir / "last")
    torch.testing.assert_close(saved.neck.fc.weight, averaged.detach())
    resumed = Trainer(
        cfg,
        run_dir=tmp_path / "ema2",
        resume=str(result.run_dir / "checkpoints" / "step_00000003"),
    )
    assert resumed.step == 3


def test_stages_switch_resolution_and_lr(pattern_folder, tmp_path) -> None:
    cfg = _gap(
        pattern_folder,
        tmp_path,
        **{
            "train.max_steps": "null",
            "train.lr": 1e-3,
            "train.stages": [{"steps": 2}, {"steps": 2, "lr": 1e-4, "image_size": 96}],
            "train.name": "stages",
        },
    )
    trainer = Trainer(cfg)
    result = trainer.fit()
    assert result.steps == 4
    assert trainer.model.config.image_size == 96
    assert trainer.stage.index == 1 and 96 in trainer._loaders
    images, _ = next(iter(trainer._loaders[96]))
    assert images.shape[-1] == 96
    # Stage 2 runs its own cosine from 1e-4, not the tail of stage 1's.
    trainer.step = 2
    trainer.stage = None
    trainer._enter_stage()
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    from openrecog.models import load_model

    assert load_model(result.run_dir / "last").config.image_size == 96


def test_resume_is_exact_with_stages_mixup_alternation_and_ema(pattern_folder, tmp_path) -> None:
    from openrecog.train.checkpoint import list_checkpoints

    from .test_trainer import _losses

    cfg = _gap(
        pattern_folder,
        tmp_path,
        **{
            "train.name": "full",
            "train.max_steps": "null",
            "train.stages": [{"steps": 3, "mixup_alpha": 0.4}, {"steps": 3, "lr": 1e-4}],
            "train.cutmix_alpha": 1.0,
            "train.alternate_steps": 2,
            "train.ema_decay": 0.9,
            "loss.margin_start": 0.1,
            "loss.margin_every": 2,
        },
    )
    full = Trainer(cfg).fit()
    first = list_checkpoints(full.run_dir / "checkpoints")[0]
    resumed = Trainer(cfg, run_dir=tmp_path / "resumed", resume=str(first))
    resumed.fit()
    expected, got = _losses(full.run_dir), _losses(tmp_path / "resumed")
    assert [got[s] for s in (4, 5, 6)] == [expected[s] for s in (4, 5, 6)]


def test_bf16_autocast_runs_the_backbone_in_bf16(pattern_folder, tmp_path) -> None:
    seen: list[torch.dtype] = []
    losses = []
    for autocast in ("none", "bf16"):
        trainer = Trainer(tiny_config(pattern_folder, tmp_path, **{"train.autocast": autocast}))
        hook = trainer.model.backbone.conv_stem.register_forward_hook(
            lambda module, args, output: seen.append(output.dtype)
        )
        images, labels = next(_batches(trainer))
        losses.append(trainer.train_step(images, labels))
        hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    # Same batch, same weights: bf16 rounding changes the loss, but not wildly (random init
    # with s=64 amplifies small cosine differences, hence the loose bound).
    assert losses[0] != losses[1] and losses[1] == pytest.approx(losses[0], rel=0.25)


def test_matmul_precision_is_in_force_during_training(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(pattern_folder, tmp_path, **{"train.matmul_precision": "medium"})
    trainer = Trainer(cfg)
    seen: list[str] = []
    trainer.model.neck.register_forward_hook(
        lambda *_: seen.append(torch.get_float32_matmul_precision())
    )
    trainer.fit()
    assert seen and set(seen) == {"medium"}
    assert torch.get_float32_matmul_precision() == "highest"


def test_head_lr_is_separate_from_the_backbone_lr(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(pattern_folder, tmp_path, **{"train.lr": 1e-4, "train.head_lr": 1e-2})
    trainer = Trainer(cfg)
    lrs = {g["module"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["backbone"] == pytest.approx(1e-4)
    assert lrs["neck"] == pytest.approx(1e-2) and lrs["head"] == pytest.approx(1e-2)


def test_ema_starts_from_the_pca_initialised_neck(pattern_folder, tmp_path) -> None:
    cfg = _gap(
        pattern_folder,
        tmp_path,
        **{"model.embedding_dim": 16, "train.neck_init_images": 20, "train.ema_decay": 0.9},
    )
    trainer = Trainer(cfg)
    assert trainer.neck_init["images"] == 20
    torch.testing.assert_close(
        trainer.ema.module.neck.fc.weight, trainer.model.neck.fc.weight.detach(), rtol=0, atol=0
    )
