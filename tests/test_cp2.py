"""The CP2 compact CNNs: budgets, structures, and the closed-set classification mode."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import timm
import torch
from torch import nn
from typer.testing import CliRunner

from openrecog.cli.main import app
from openrecog.config import AugmentConfig, load_config
from openrecog.data.transforms import build_train_transform
from openrecog.models import create_model, get_model_config
from openrecog.models.budget import (
    ParamBudgetError,
    check_param_budget,
    count_macs,
    count_parameters,
)
from openrecog.models.classifier import load_classifier
from openrecog.models.cp2 import CP2_VARIANTS, DenseResStack, ResStack
from openrecog.train import Trainer
from tests.conftest import draw_pattern

BUDGET = 5_000_000


@pytest.mark.parametrize("name", sorted(CP2_VARIANTS))
def test_every_variant_builds_under_the_budget_with_its_classifier(name: str) -> None:
    classifier = timm.create_model(name, num_classes=10)
    assert 1_000_000 < count_parameters(classifier) <= BUDGET
    assert classifier(torch.zeros(2, 3, 128, 128)).shape == (2, 10)
    embedder = create_model(name, pretrained=False)  # the registered openrecog config
    assert count_parameters(embedder) <= get_model_config(name).max_params == BUDGET
    assert embedder(torch.zeros(2, 3, 128, 128)).shape == (2, 256)


@pytest.mark.parametrize("size", [64, 96])
def test_backbones_give_timm_feature_maps_of_num_features_channels(size: int) -> None:
    for name in CP2_VARIANTS:
        backbone = timm.create_model(name, num_classes=0, global_pool="")
        features = backbone.forward_features(torch.zeros(1, 3, size, size))
        if backbone.multilevel:
            assert features.shape == (1, backbone.num_features, 1, 1)
        else:  # total stride 32
            assert features.shape == (1, backbone.num_features, size // 32, size // 32)


def test_concat_stage_concatenates_two_stacks_of_different_kernels() -> None:
    concat = timm.create_model("cp2_concat", num_classes=0)
    deep = timm.create_model("cp2_deep", num_classes=0)
    x = torch.randn(1, 64, 16, 16)
    concat.eval(), deep.eval()
    first, second = concat.stage1.first, concat.stage1.second
    torch.testing.assert_close(concat.stage1(x), torch.cat([first(x), second(x)], dim=1))
    kernels = {first.blocks[0].conv1.kernel_size, second.blocks[0].conv1.kernel_size}
    assert kernels == {(3, 3), (5, 5)}
    assert concat.down2[0].in_channels == 128  # width doubled by the concatenation
    assert deep.down2[0].in_channels == 64  # in sequence: the width stays


def test_dense_stack_feeds_each_block_the_sum_of_all_earlier_outputs() -> None:
    torch.manual_seed(0)
    stack = DenseResStack(4, 3, 3, act_layer="silu", merge_act_layer="identity").eval()
    seen = []
    for block in stack.blocks:
        block.register_forward_hook(lambda _m, args, out: seen.append((args[0], out)))
    x = torch.randn(2, 4, 8, 8)
    result = stack(x)
    outputs = [x]
    for i, (block_input, block_output) in enumerate(seen):
        torch.testing.assert_close(block_input, sum(outputs))  # x + out_0 + ... + out_{i-1}
        outputs.append(block_input + block_output)
        assert len(outputs) == i + 2
    torch.testing.assert_close(result, outputs[-1])
    # A plain residual stack with the same weights only sees the latest output.
    plain = ResStack(4, 3, 3, act_layer="silu", merge_act_layer="identity").eval()
    plain.load_state_dict(stack.state_dict())
    assert not torch.allclose(plain(x), result)


def test_multilevel_features_concatenate_five_level_projections() -> None:
    model = timm.create_model("cp2_dense", num_classes=0, global_pool="").eval()
    dims = [level.out_dim for level in model.levels]
    assert dims == [32, 32, 64, 64, 64] and model.num_features == 256
    captured = []
    for level in model.levels:
        level.register_forward_hook(lambda _m, _a, out: captured.append(out))
    features = model.forward_features(torch.randn(1, 3, 64, 64))
    torch.testing.assert_close(features.flatten(1), torch.cat(captured, dim=1))
    assert timm.create_model("cp2_concat", num_classes=0).levels is None


def _ordered_leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


def test_no_dropout_directly_after_batchnorm_and_none_in_nodropout_trunks() -> None:
    for name in CP2_VARIANTS:
        model = timm.create_model(name, num_classes=10)
        leaves = _ordered_leaves(model)
        for before, after in zip(leaves, leaves[1:], strict=False):
            if isinstance(before, nn.BatchNorm1d | nn.BatchNorm2d):
                assert not isinstance(after, nn.Dropout | nn.Dropout2d), name
        trunk_drops = [m for m in model.modules() if isinstance(m, nn.Dropout2d)]
        if CP2_VARIANTS[name].get("trunk_dropout"):
            assert trunk_drops, name
        else:
            assert not trunk_drops, name
        head_drops = [m.p for m in model.head.modules() if isinstance(m, nn.Dropout)]
        assert head_drops == [0.3, 0.2]  # the report keeps the classifier's dropout


@pytest.mark.parametrize("act", ["gelu", "mish", "silu"])
def test_activation_choice_is_honoured(act: str) -> None:
    model = timm.create_model(
        "cp2_dense", num_classes=10, act_layer=act, merge_act_layer=act, head_act_layer=act
    )
    kinds = {type(m).__name__.lower() for m in model.modules()}
    expected = {"gelu": "gelu", "mish": "mish", "silu": "silu"}[act]
    assert expected in kinds
    assert not ({"gelu", "mish", "silu"} - {expected}) & kinds
    # Through the openrecog config too (model.backbone_kwargs).
    embedder = create_model("cp2_concat", pretrained=False, backbone_kwargs={"act_layer": act})
    assert any(type(m).__name__.lower() == expected for m in embedder.backbone.stage1.modules())


def test_over_budget_config_fails_with_a_clear_message() -> None:
    with pytest.raises(ParamBudgetError, match=r"over the budget model.max_params=5,000,000"):
        create_model("cp2_dense", pretrained=False, backbone_kwargs={"width": 80})
    check_param_budget(10, None, "anything")  # no budget, no check
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "train",
            "model.backbone=cp2_concat",
            "model.pretrained=false",
            "model.max_params=1000000",
            "data.source=synthetic",
        ],
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("error: model cp2_concat")
    assert "Traceback" not in result.output


def test_models_max_params_lists_what_fits() -> None:
    result = CliRunner().invoke(app, ["models", "--max-params", "5e6"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.splitlines() if line.startswith("  ")}
    assert set(CP2_VARIANTS) <= listed
    assert "lite2_squeeze" not in listed  # 5.9M with its squeeze neck: over the budget
    small = CliRunner().invoke(app, ["models", "--max-params", "1e6"])
    assert {line.split()[0] for line in small.output.splitlines() if line.startswith("  ")} == {
        "docclassifier_lcnet050"
    }


def test_macs_counter_counts_a_convolution_exactly() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_macs(conv, 16) == 3 * 8 * 9 * 16 * 16


def test_cp2_augmentation_preset_gives_normalised_tensors() -> None:
    transform = build_train_transform(32, [0.5] * 3, [0.25] * 3, AugmentConfig(preset="cp2"))
    names = [type(t).__name__ for t in transform.transforms]
    for step in ("RandomCrop", "RandomRotation", "RandomGrayscale", "RandomAffine"):
        assert step in names
    assert transform(draw_pattern(0, 0)).shape == (3, 32, 32)


def _pattern_csv(root: Path, classes: int, train: int, val: int, size: int) -> Path:
    rows = []
    for kind in range(classes):
        folder = root / "images" / f"class_{kind}"
        folder.mkdir(parents=True)
        for variant in range(train + val):
            draw_pattern(kind, variant, size).save(folder / f"{variant}.png")
            split = "train" if variant < train else "val"
            rows.append(
                {"path": f"images/class_{kind}/{variant}.png", "label": kind, "split": split}
            )
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_short_classification_run_beats_chance(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    classes = 6
    data = _pattern_csv(tmp_path / "data", classes, train=10, val=6, size=40)
    overrides = [
        "model.backbone=cp2_dense",
        "model.backbone_kwargs={width: 16}",
        "model.pretrained=false",
        "model.max_params=5000000",
        "model.image_size=32",
        "model.neck=gap",
        "model.norm=bn",
        "model.embedding_dim=32",
        "data.source=csv",
        f"data.root={data}",
        "data.augment.preset=cp2",
        "loss.name=ce",
        "loss.label_smoothing=0.1",
        "loss.hidden_dim=32",
        "loss.dropout=0.1",
        "train.batch_size=12",
        "train.schedule=cosine",
        "train.lr=0.005",
        "train.warmup_steps=3",
        "train.stages=[{steps: 30, mixup_alpha: 0.1}, {steps: 10, lr: 0.001, mixup_alpha: 0.5}]",
        "train.progress=false",
        "train.checkpoint_every=1000",
        f"train.output_dir={tmp_path / 'runs'}",
        "eval.source=csv",
        f"eval.root={data}",
        "eval.split=val",
    ]
    trainer = Trainer(load_config(None, overrides))
    before = trainer.evaluate()["top1"]
    result = trainer.fit()
    assert result.steps == 40
    after = result.final_metrics["top1"]
    assert result.final_metrics["images"] == classes * 6
    assert after >= 0.45, (before, after)  # chance is 1/6
    assert after > before
    # The saved artifact is a classifier that gives the same accuracy.
    classifier = load_classifier(result.run_dir / "last")
    assert classifier.class_names == [str(k) for k in range(classes)]
    from openrecog.data.datasets import csv_dataset
    from openrecog.eval.classify import evaluate_classifier

    reloaded = evaluate_classifier(classifier, csv_dataset(data, "val"), classifier.class_names)
    assert reloaded["top1"] == pytest.approx(after)


def test_shuffled_sampler_covers_each_image_once_per_epoch_and_resumes() -> None:
    from openrecog.data.samplers import ShuffledBatchSampler

    sampler = ShuffledBatchSampler(10, 3, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 and all(len(b) == 3 for b in batches)
    assert len({i for batch in batches for i, _ in batch}) == 9  # last partial batch dropped
    sampler.set_epoch(0, start_batch=2)
    assert list(sampler) == batches[2:]
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_classifier_keys_need_loss_ce() -> None:
    from openrecog.config import ConfigError

    with pytest.raises(ConfigError, match="only apply to loss.name=ce"):
        load_config(None, ["loss.label_smoothing=0.1"])
    with pytest.raises(ConfigError, match="ema_decay is not supported"):
        load_config(None, ["loss.name=ce", "train.ema_decay=0.99"])


def test_classification_run_resumes_exactly(tmp_path: Path) -> None:
    import json

    data = _pattern_csv(tmp_path / "data", 3, train=6, val=2, size=32)
    overrides = [
        "model.backbone=cp2_concat",
        "model.backbone_kwargs={width: 8}",
        "model.pretrained=false",
        "model.image_size=32",
        "data.source=csv",
        f"data.root={data}",
        "loss.name=ce",
        "loss.hidden_dim=16",
        "train.batch_size=4",
        "train.max_steps=6",
        "train.mixup_alpha=0.2",
        "train.checkpoint_every=3",
        "train.log_every=1",
        "train.progress=false",
        f"train.output_dir={tmp_path / 'runs'}",
        "eval.source=none",
    ]
    cfg = load_config(None, overrides)
    full = Trainer(cfg).fit()
    checkpoint = sorted((full.run_dir / "checkpoints").iterdir())[0]
    resumed_dir = tmp_path / "resumed"
    Trainer(cfg, run_dir=resumed_dir, resume=str(checkpoint)).fit()

    def losses(run: Path) -> dict[int, float]:
        lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in lines if "loss" in r}

    assert [losses(resumed_dir)[s] for s in (4, 5, 6)] == [
        losses(full.run_dir)[s] for s in (4, 5, 6)
    ]
    with pytest.raises(ValueError, match="not among the training classes"):
        Trainer(load_config(None, [*overrides[:-1], "eval.source=synthetic"]))


def test_classifier_budget_counts_the_head_too(tmp_path: Path) -> None:
    data = _pattern_csv(tmp_path / "data", 2, train=4, val=0, size=32)
    embedder = create_model("cp2_concat", pretrained=False, backbone_kwargs={"width": 8})
    overrides = [
        "model.backbone=cp2_concat",
        "model.backbone_kwargs={width: 8}",
        "model.pretrained=false",
        "model.norm=bn",  # as in the registered config built above
        f"model.max_params={count_parameters(embedder)}",  # the embedding model just fits
        "data.source=csv",
        f"data.root={data}",
        "loss.name=ce",
        "loss.hidden_dim=64",
        "train.batch_size=4",
        f"train.output_dir={tmp_path / 'runs'}",
        "eval.source=none",
    ]
    with pytest.raises(ParamBudgetError, match=r"classifier cp2_concat \+ gap \+ ce head has"):
        Trainer(load_config(None, overrides))


@pytest.mark.parametrize("neck", ["gap", "squeeze", "flatten"])
def test_cp2_backbones_work_with_every_neck(neck: str) -> None:
    for name in ("cp2_concat", "cp2_dense"):
        model = create_model(
            name, pretrained=False, neck=neck, image_size=64, backbone_kwargs={"width": 16}
        )
        embeddings = model(torch.rand(2, 3, 64, 64))
        assert embeddings.shape == (2, 256)
        torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))
