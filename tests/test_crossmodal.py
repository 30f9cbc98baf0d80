"""Cross-modal retrieval: ITC loss, queues, momentum, recall, training, gallery text search."""

import csv
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from openrecog.config import ConfigError, ModelConfig
from openrecog.data.captions import CaptionDataset
from openrecog.data.datasets import DatasetError
from openrecog.eval.crossmodal import itm_rerank_scores, retrieval_recall
from openrecog.losses.itc import (
    FeatureQueue,
    clamp_temperature,
    itc_loss,
    itm_hard_negatives,
    momentum_update,
)
from openrecog.models import create_model, save_artifact
from openrecog.models.crossmodal import ITMHead
from tests.conftest import draw_pattern

COLOURS = ["red", "green", "blue", "yellow", "purple", "teal", "grey", "orange"]
SHAPES = ["circle", "square", "triangle", "striped pattern"]


def eye2() -> torch.Tensor:
    return torch.eye(2)


def test_itc_loss_matches_hand_computed_cases() -> None:
    t = torch.tensor(1.0)
    # Orthogonal pairs, no queue: each row is softmax([1, 0]) -> -log(e/(e+1)) = log(1+1/e).
    loss = itc_loss(eye2(), eye2(), eye2(), eye2(), t)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # A queue holding [1, 0] adds a negative equal to the first positive:
    # row 0 scores [1, 0, 1] -> log(2 + 1/e); row 1 scores [0, 1, 0] -> log(1 + 2/e).
    queue = torch.tensor([[1.0, 0.0]])
    loss = itc_loss(eye2(), eye2(), eye2(), eye2(), t, queue, queue)
    expected = (math.log(2 + math.exp(-1)) + math.log(1 + 2 * math.exp(-1))) / 2
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    # Momentum distillation with alpha = 0.5: targets 0.5 * softmax([1, 0]) + 0.5 * one-hot.
    q = math.exp(1) / (math.exp(1) + 1)
    target = [0.5 * q + 0.5, 0.5 * (1 - q)]
    log_p = [math.log(q), math.log(1 - q)]
    expected = -(target[0] * log_p[0] + target[1] * log_p[1])
    loss = itc_loss(eye2(), eye2(), eye2(), eye2(), t, alpha=0.5)
    assert float(loss) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        itc_loss(eye2(), eye2(), eye2(), eye2(), t, alpha=1.5)


def test_momentum_distillation_is_albefs_mixture_of_ce_and_kl() -> None:
    # (1 - a) CE(one-hot, p) + a [KL(q || p) + H(q)] == soft CE with a q + (1 - a) one-hot.
    g = torch.Generator().manual_seed(0)
    img, txt = (F.normalize(torch.randn(4, 8, generator=g), dim=1) for _ in range(2))
    img_m, txt_m = (F.normalize(torch.randn(4, 8, generator=g), dim=1) for _ in range(2))
    t, a = torch.tensor(0.1), 0.4
    mixed = itc_loss(img, txt, img_m, txt_m, t, alpha=a)
    ce = itc_loss(img, txt, img_m, txt_m, t)

    def kl_plus_entropy(online, momentum, other_m):
        q = F.softmax(momentum @ other_m.T / t, dim=1)
        log_p = F.log_softmax(online @ other_m.T / t, dim=1)
        return -(q * log_p).sum(dim=1).mean()

    soft = (kl_plus_entropy(img, img_m, txt_m) + kl_plus_entropy(txt, txt_m, img_m)) / 2
    assert float(mixed) == pytest.approx(float((1 - a) * ce + a * soft), abs=1e-5)


def test_itc_gradient_reaches_online_features_only() -> None:
    img = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    txt = F.normalize(torch.randn(3, 4), dim=1).requires_grad_()
    img_m = img.detach().clone().requires_grad_()
    loss = itc_loss(img, txt, img_m, txt.detach(), torch.tensor(0.07), alpha=0.3)
    loss.backward()
    assert img.grad is not None and txt.grad is not None
    assert img_m.grad is None


def test_queue_wraps_around_and_keeps_the_newest() -> None:
    queue = FeatureQueue(dim=2, size=3)
    initial = queue.features.clone()
    torch.testing.assert_close(initial.norm(dim=1), torch.ones(3))
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queue.push(a)
    torch.testing.assert_close(queue.features[:2], a)
    torch.testing.assert_close(queue.features[2], initial[2])
    assert int(queue.pointer) == 2
    b = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    queue.push(b)  # fills slot 2, wraps to slot 0
    torch.testing.assert_close(queue.features, torch.tensor([[0.0, -1.0], [0.0, 1.0], [-1.0, 0.0]]))
    assert int(queue.pointer) == 1
    queue.push(torch.arange(10.0).view(5, 2))  # more than fit: only the newest 3
    assert set(queue.features[:, 0].tolist()) == {4.0, 6.0, 8.0}
    FeatureQueue(2, 0).push(a)  # a disabled queue ignores pushes
    with pytest.raises(ValueError):
        FeatureQueue(2, -1)


def test_momentum_update_and_temperature_clamp() -> None:
    online, momentum = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    with torch.no_grad():
        online.weight.fill_(1.0)
        momentum.weight.fill_(0.0)
    momentum_update(online, momentum, m=0.9)
    torch.testing.assert_close(momentum.weight, torch.full((2, 2), 0.1))
    momentum_update(online, momentum, m=0.9)
    torch.testing.assert_close(momentum.weight, torch.full((2, 2), 0.19))
    t = torch.nn.Parameter(torch.tensor(5.0))
    clamp_temperature(t)
    assert t.item() == 0.5


def test_hard_negatives_never_pick_the_positive() -> None:
    g = torch.Generator().manual_seed(0)
    feat = F.normalize(torch.randn(6, 8, generator=g), dim=1)
    for _ in range(20):
        neg_text, neg_image = itm_hard_negatives(feat, feat, generator=g)
        assert (neg_text != torch.arange(6)).all() and (neg_image != torch.arange(6)).all()
    with pytest.raises(ValueError):
        itm_hard_negatives(feat[:1], feat[:1])


def test_recall_and_itm_rerank() -> None:
    texts = np.eye(4, dtype=np.float32)
    images = texts[[0, 1, 3, 2]]  # images 2 and 3 swapped
    r = retrieval_recall(images, texts, ks=(1, 2))
    assert r["i2t_r@1"] == 0.5 and r["t2i_r@1"] == 0.5 and r["i2t_r@2"] == 0.5
    perfect = retrieval_recall(texts, texts, ks=(1,))
    assert perfect["i2t_r@1"] == 1.0 and perfect["mean_r"] == 1.0
    # Ties count against the query: identical captions cannot both be first.
    tied = retrieval_recall(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32), ks=(1,))
    assert tied["i2t_r@1"] == 0.0
    head = ITMHead(4)
    i2t, t2i = itm_rerank_scores(texts, texts, head, top_k=2)
    assert i2t.shape == t2i.shape == (4, 4)
    assert (np.sort(i2t, axis=1)[:, -2:] >= 2.0).all()  # the top-2 lifted above the rest
    with pytest.raises(ValueError):
        retrieval_recall(images[:, :2], texts)


def write_caption_set(root, kinds: int = 8, train_variants: int = 6) -> None:
    rows = []
    for kind in range(kinds):
        text = f"a {COLOURS[kind % 8]} {SHAPES[kind % 4]}"
        for variant in range(train_variants + 1):
            path = root / f"k{kind}_{variant}.png"
            draw_pattern(kind, variant, size=64).save(path)
            split = "test" if variant == train_variants else "train"
            rows.append({"path": path.name, "text": text, "split": split})
    with open(root / "captions.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "text", "split"])
        writer.writeheader()
        writer.writerows(rows)


def test_caption_dataset_checks_its_rows(tmp_path) -> None:
    write_caption_set(tmp_path, kinds=2, train_variants=1)
    data = CaptionDataset(tmp_path, "test")
    assert len(data) == 2 and data[0][1] == "a red circle"
    assert len(CaptionDataset(tmp_path)) == 4
    with pytest.raises(DatasetError, match="no pairs in split"):
        CaptionDataset(tmp_path, "val")
    (tmp_path / "captions.csv").write_text("path,text\n../escape.png,x\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="outside"):
        CaptionDataset(tmp_path)
    (tmp_path / "captions.csv").write_text("path,text\nk0_0.png,\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="empty caption"):
        CaptionDataset(tmp_path)
    (tmp_path / "captions.csv").write_text("file,caption\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="path,text"):
        CaptionDataset(tmp_path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short ITC + MoD + ITM run on generated 'a <colour> <shape>' pairs."""
    from openrecog.train.crossmodal import CrossModalTrainer, load_crossmodal_config

    root = tmp_path_factory.mktemp("captions")
    write_caption_set(root)
    torch.manual_seed(0)
    config = ModelConfig(
        backbone="test_efficientnet", pretrained=False, image_size=64, neck="gap", embedding_dim=32
    )
    image_model = save_artifact(create_model(config, pretrained=False), root / "image_model")
    cfg = load_crossmodal_config(
        None,
        [
            f"data_root={root}",
            f"image_model={image_model}",
            f"output_dir={root / 'runs'}",
            "joint_dim=32",
            "steps=60",
            "batch_size=16",
            "queue_size=32",
            "momentum=0.9",
            "itm=true",
            "head_lr=0.01",
            "lr=0.001",
            "log_every=20",
        ],
    )
    trainer = CrossModalTrainer(cfg, device="cpu")
    return trainer, trainer.fit(progress=False), root


def test_short_training_beats_the_untrained_floor(trained) -> None:
    _, result, _ = trained
    floor, after = result.floor_metrics, result.metrics
    # 8 held-out pairs: chance R@1 is 1/8, and the untrained projections are at chance.
    # Measured after 60 steps: R@1 0.375 (text->image) and 0.625 (image->text).
    assert floor["t2i_r@1"] <= 0.25 and floor["i2t_r@1"] <= 0.25
    assert (after["t2i_r@1"] + after["i2t_r@1"]) / 2 >= 0.375
    assert after["mean_r"] > floor["mean_r"] + 0.15
    assert "itm_t2i_r@1" in after
    assert (result.model_dir / "image" / "config.json").is_file()


def test_config_errors_are_clear(tmp_path) -> None:
    from openrecog.train.crossmodal import load_crossmodal_config

    with pytest.raises(ConfigError, match="data_root"):
        load_crossmodal_config(None, [])
    with pytest.raises(ConfigError, match="queue_sise"):
        load_crossmodal_config(None, [f"data_root={tmp_path}", "queue_sise=3"])


def test_gallery_cli_and_server_search_by_text(trained, tmp_path) -> None:
    import json

    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from openrecog.cli.main import app
    from openrecog.gallery import Gallery, GalleryError
    from openrecog.models.crossmodal import load_image_side, load_text_encoder
    from openrecog.serve import ServeSettings, create_app

    trainer, result, root = trained
    image_model = load_image_side(result.model_dir)
    gallery = Gallery(image_model, threshold=0.0, device="cpu")
    for kind in range(8):
        gallery.register(root / f"k{kind}_6.png", label=f"kind{kind}")
    # The saved image side (projection folded into the model) gives the trainer's joint space.
    picture = draw_pattern(3, 6, size=64)
    with torch.inference_mode():
        joint = trainer.image.eval()(trainer.eval_transform(picture)[None])
    np.testing.assert_allclose(gallery.encoder.encode([picture]), joint.numpy(), atol=1e-4)
    text = load_text_encoder(result.model_dir)
    captions = [f"a {COLOURS[k]} {SHAPES[k % 4]}" for k in range(8)]
    np.testing.assert_allclose(
        text.encode(captions).numpy(), trainer.text.encode(captions).numpy(), atol=1e-5
    )
    with pytest.raises(GalleryError, match="no text model"):
        gallery.search_text("a red circle")
    gallery.attach_text_encoder(text)
    found = sum(gallery.search_text(c, k=1)[0].label == f"kind{k}" for k, c in enumerate(captions))
    assert abs(found - 8 * result.metrics["t2i_r@1"]) <= 1  # what the evaluation measured
    assert len(gallery.search_text("a red circle", k=20)) == 8
    with pytest.raises(GalleryError, match="another image model"):
        Gallery(create_model("docclassifier_lcnet050", pretrained=False)).attach_text_encoder(text)

    gallery.save(tmp_path / "g")
    runner = CliRunner()
    args = ["search", str(tmp_path / "g"), "--text", "a red circle", "--json", "-k", "3"]
    r = runner.invoke(app, [*args, "--text-model", str(result.model_dir)])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)) == 3
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--text-model" in r.output and "Traceback" not in r.output

    client = TestClient(create_app(gallery, None, ServeSettings()))
    response = client.post("/search/text", json={"text": "a red circle"}, params={"k": 2})
    assert response.status_code == 200 and len(response.json()["hits"]) == 2
    assert client.post("/search/text", json={"text": "  "}).status_code == 422
    plain = TestClient(create_app(Gallery.load(tmp_path / "g"), None, ServeSettings()))
    answer = plain.post("/search/text", json={"text": "a red circle"})
    assert answer.status_code == 404 and "--text-model" in answer.json()["detail"]


def test_image_to_text_over_a_caption_set(trained, tmp_path) -> None:
    from typer.testing import CliRunner

    from openrecog.cli.main import app
    from openrecog.models.crossmodal import load_image_side, load_text_encoder, rank_captions
    from openrecog.models.encoder import ImageEncoder

    _, result, root = trained
    captions = [f"a {COLOURS[k]} {SHAPES[k % 4]}" for k in range(8)]
    encoder = ImageEncoder(load_image_side(result.model_dir), device="cpu")
    images = [root / f"k{kind}_6.png" for kind in range(8)]
    text = load_text_encoder(result.model_dir)
    ranked = rank_captions(encoder.encode(images), captions, text, k=2)
    assert len(ranked) == 8 and all(len(r) == 2 and r[0][1] >= r[1][1] for r in ranked)
    found = sum(best[0][0] == captions[kind] for kind, best in enumerate(ranked))
    assert abs(found - 8 * result.metrics["i2t_r@1"]) <= 1  # what the evaluation measured
    with pytest.raises(ValueError, match="joint space"):
        rank_captions(np.zeros((1, 5), np.float32), captions, text)
    lines = tmp_path / "captions.txt"
    lines.write_text("\n".join(captions), encoding="utf-8")
    r = CliRunner().invoke(
        app,
        [
            "crossmodal",
            "describe",
            str(images[0]),
            "--captions",
            str(lines),
            "--text-model",
            str(result.model_dir),
            "-k",
            "2",
        ],
    )
    assert r.exit_code == 0, r.output
    assert r.output.count("\t") == 4 and str(images[0]) in r.output


TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A small local stand-in for a user's CLIP checkpoint: (config.json, weights.pt)."""
    import json

    import open_clip

    root = tmp_path_factory.mktemp("clip")
    config = root / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP), encoding="utf-8")
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-clip", pretrained=None)
    checkpoint = root / "tiny-clip.pt"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    return config, checkpoint, model


def test_open_clip_text_tower_from_a_local_checkpoint(tiny_clip, tmp_path) -> None:
    import open_clip

    from openrecog.models.text import TextModelError, build_text_tower

    config, checkpoint, reference = tiny_clip
    tower = build_text_tower(f"open_clip:{config}@{checkpoint}")
    assert tower.dim == 16
    out = tower(["a red circle", "a blue square"])
    assert out.shape == (2, 16)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    tokens = open_clip.get_tokenizer("tiny-clip")(["a red circle"])
    with torch.no_grad():
        expected = F.normalize(reference.encode_text(tokens), dim=-1)
        torch.testing.assert_close(tower(["a red circle"]), expected)
    tower.save(tmp_path / "saved")
    again = build_text_tower("ignored", folder=tmp_path / "saved")
    with torch.no_grad():
        torch.testing.assert_close(again(["a red circle"]), expected)
    with pytest.raises(TextModelError, match="CHECKPOINT"):
        build_text_tower(f"open_clip:{config}")
    with pytest.raises(TextModelError, match="not found"):
        build_text_tower(f"open_clip:{config}@{tmp_path / 'missing.pt'}")
    with pytest.raises(TextModelError, match="nothing is downloaded"):
        build_text_tower("sentence-transformers/all-mpnet-base-v2")


def test_training_an_unlocked_open_clip_tower_saves_and_reloads_it(tiny_clip, trained) -> None:
    from openrecog.models.crossmodal import load_text_encoder
    from openrecog.train.crossmodal import CrossModalTrainer, load_crossmodal_config

    config, checkpoint, _ = tiny_clip
    _, first, root = trained
    cfg = load_crossmodal_config(
        None,
        [
            f"data_root={root}",
            f"image_model={root / 'image_model'}",
            f"output_dir={root / 'runs'}",
            "name=open_clip",
            f"text_model=open_clip:{config}@{checkpoint}",
            "lock_text=false",
            "joint_dim=16",
            "steps=3",
            "batch_size=8",
            "queue_size=8",
            "eval_split=null",
        ],
    )
    trainer = CrossModalTrainer(cfg, device="cpu")
    before = {k: v.clone() for k, v in trainer.text.tower.state_dict().items()}
    result = trainer.fit(progress=False)
    changed = [
        k for k, v in trainer.text.tower.state_dict().items() if not torch.equal(v, before[k])
    ]
    assert changed  # the text tower itself was trained
    assert result.metrics == {}  # no held-out split
    reloaded = load_text_encoder(result.model_dir)
    captions = ["a red circle", "a teal striped pattern"]
    np.testing.assert_allclose(
        reloaded.encode(captions).numpy(), trainer.text.encode(captions).numpy(), atol=1e-5
    )
