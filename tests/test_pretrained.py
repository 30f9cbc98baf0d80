from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from openrecog.data.transforms import build_eval_transform
from openrecog.models.pretrained import (
    convert_lukemelas_lite,
    load_lukemelas_state_dict,
    load_offline_pretrained,
    offline_weight_path,
)
from tests.conftest import SHARED_DATA, draw_pattern
from tests.reference_lite import reference_forward


def _images() -> torch.Tensor:
    transform = build_eval_transform(224, [0.5] * 3, [0.5] * 3)
    caltech = sorted((SHARED_DATA / "caltech101" / "images").glob("*/*.jpg"))[::400][:6]
    images = [Image.open(p).convert("RGB") for p in caltech] or [
        draw_pattern(k, 0, 224) for k in range(6)
    ]
    return torch.stack([transform(im) for im in images])


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
def test_mapped_weights_match_reference_structure(name: str) -> None:
    state = load_lukemelas_state_dict(offline_weight_path(name))
    model = timm.create_model(name, pretrained=False).eval()
    load_offline_pretrained(model, name)
    x = _images()
    with torch.no_grad():
        ours = model(x)
        reference = reference_forward(state, x)
    assert torch.allclose(ours, reference, atol=1e-3, rtol=1e-4), (ours - reference).abs().max()
    assert torch.equal(ours.topk(5).indices, reference.topk(5).indices)


@pytest.mark.skipif(not (SHARED_DATA / "caltech101").is_dir(), reason="needs ../shared/data")
def test_imagenet_predictions_are_sensible() -> None:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    load_offline_pretrained(model, "tf_efficientnet_lite0")
    transform = build_eval_transform(224, [0.5] * 3, [0.5] * 3)
    paths = sorted((SHARED_DATA / "caltech101" / "images" / "airplanes").glob("*.jpg"))[:5]
    x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    top5 = model(x).topk(5).indices
    # 404 airliner, 895 warplane, 908 wing: most airplane photos have one in their top-5
    # (the rest are odd crops: amphibian, speedboat); random weights would give ~0 of 5.
    assert sum(bool({404, 895, 908} & set(row.tolist())) for row in top5) >= 3


def test_feature_extractor_loads_without_classifier() -> None:
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    load_offline_pretrained(model, "tf_efficientnet_lite0")
    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_offline_pretrained(full, "tf_efficientnet_lite0")
    assert torch.equal(model.conv_stem.weight, full.conv_stem.weight)


def test_mapping_rejects_wrong_architecture() -> None:
    state = load_lukemelas_state_dict(offline_weight_path("tf_efficientnet_lite2"))
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    with pytest.raises(ValueError, match="shape mismatch|block"):
        convert_lukemelas_lite(state, model)


def test_unknown_offline_weights_have_clear_error() -> None:
    with pytest.raises(ValueError, match="no offline ImageNet weights"):
        offline_weight_path("resnet50")


def test_weight_file_is_installed() -> None:
    assert Path(offline_weight_path("tf_efficientnet_lite1")).is_file()
