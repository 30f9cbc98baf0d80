"""Train → register → classify on tiny generated data: training must beat no training."""

from openrecog.config import load_config
from openrecog.gallery import Gallery
from openrecog.models import create_model, load_model
from openrecog.train import Trainer
from tests.conftest import draw_pattern


def _accuracy(model, gallery_root, queries) -> float:
    gallery = Gallery(model, threshold=-1.0)
    gallery.register_folder(gallery_root)
    return sum(gallery.classify(image)[0] == label for image, label in queries) / len(queries)


def test_trained_model_beats_untrained(tmp_path) -> None:
    train_root, gallery_root = tmp_path / "train", tmp_path / "gallery"
    for kind in range(8):
        (train_root / f"c{kind}").mkdir(parents=True)
        (gallery_root / f"c{kind}").mkdir(parents=True)
        for variant in range(6):
            draw_pattern(kind, variant, 64).save(train_root / f"c{kind}" / f"{variant}.png")
        for ref in range(100, 103):
            draw_pattern(kind, ref, 64).save(gallery_root / f"c{kind}" / f"ref{ref}.png")
    queries = [(draw_pattern(k, v, 64), f"c{k}") for k in range(8) for v in range(200, 206)]

    cfg = load_config(
        None,
        [
            "model.backbone=lcnet_050",
            "model.pretrained=false",
            "model.image_size=64",
            "model.embedding_dim=64",
            "data.source=folder",
            f"data.root={train_root}",
            "data.images_per_class=4",
            "train.batch_size=16",
            "train.max_steps=200",
            "train.lr=0.003",
            "train.progress=false",
            f"train.output_dir={tmp_path}",
            "eval.source=none",
            "loss.s=16",
            "loss.m=0.2",
            "data.augment.color_jitter=0.0",
        ],
    )
    untrained = create_model(cfg.model)
    result = Trainer(cfg).fit()
    trained = load_model(result.run_dir / "last")
    before = _accuracy(untrained, gallery_root, queries)
    after = _accuracy(trained, gallery_root, queries)
    # Chance is 1/8. Random-init LCNet, 200 steps, 3 references per class; measured here with
    # train.seed 0-3: untrained 0.06-0.13, trained 0.48-0.75. (60 steps and one reference
    # passed on one install and failed on the next: 0.08 -> 0.27.)
    assert after > before + 0.2, (before, after)
    assert after >= 0.35, (before, after)
