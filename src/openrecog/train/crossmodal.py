"""Cross-modal training (ALBEF-style ITC with momentum encoders, queues, distillation, ITM).

``openrecog crossmodal train CONFIG [key=value ...]`` runs :class:`CrossModalTrainer` on a
``captions.csv`` folder and writes a two-tower folder (:mod:`openrecog.models.crossmodal`) to
``output_dir/name/model``, with ``log.jsonl`` and the held-out R@K next to it.
"""

from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from openrecog.config import AugmentConfig, ConfigError, config_data, format_validation_error
from openrecog.data.captions import CaptionDataset
from openrecog.data.transforms import build_eval_transform, build_train_transform
from openrecog.eval.crossmodal import itm_rerank_scores, retrieval_recall
from openrecog.losses.itc import (
    FeatureQueue,
    clamp_temperature,
    itc_loss,
    itm_hard_negatives,
    momentum_update,
)
from openrecog.models.crossmodal import ImageTower, TextEncoder, save_crossmodal
from openrecog.models.embedder import Embedder, resolve_preprocessing
from openrecog.models.registry import load_model
from openrecog.models.text import build_text_tower


class CrossModalConfig(BaseModel):
    """Everything a cross-modal run needs (flat keys; YAML plus ``key=value`` overrides)."""

    model_config = ConfigDict(extra="forbid")

    data_root: str = Field(..., description="folder with captions.csv (path,text[,split])")
    train_split: str = "train"
    eval_split: str | None = Field("test", description="held-out pairs for R@K (None: none)")
    image_model: str = Field("default", description="image model: shipped, artifact, registry")
    image_size: int | None = Field(None, ge=32, description="override the image model's size")
    text_model: str = Field(
        "minilm",
        description="'minilm', a sentence-transformers folder, or open_clip:NAME@CHECKPOINT",
    )
    max_text_length: int = Field(64, ge=8)
    joint_dim: int = Field(256, ge=8)
    lock_text: bool = Field(True, description="freeze the text tower (train its projection)")
    lock_image_backbone: bool = Field(False, description="freeze the image embedder too")
    momentum_encoders: bool = Field(True, description="ALBEF momentum model and queues")
    momentum: float = Field(0.995, ge=0.0, lt=1.0)
    queue_size: int = Field(1024, ge=0)
    alpha: float = Field(0.4, ge=0.0, le=1.0, description="momentum distillation (0: off)")
    temperature: float = Field(0.07, gt=0.0)
    itm: bool = Field(False, description="train an image-text matching head (re-ranking)")
    itm_weight: float = Field(1.0, ge=0.0)
    itm_top_k: int = Field(16, ge=1, description="re-rank this many candidates with ITM")
    steps: int = Field(200, ge=1)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-4, gt=0.0, description="image embedder learning rate")
    head_lr: float = Field(1e-3, gt=0.0, description="projections, temperature, ITM head")
    text_lr: float = Field(2e-5, gt=0.0, description="text tower (when not locked)")
    weight_decay: float = Field(0.02, ge=0.0)
    warmup_steps: int = Field(10, ge=0)
    log_every: int = Field(10, ge=1)
    num_workers: int = Field(0, ge=0)
    seed: int = 0
    output_dir: str = "runs"
    name: str = "crossmodal"


def load_crossmodal_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> CrossModalConfig:
    """A :class:`CrossModalConfig` from YAML (optional) and ``key=value`` overrides.

    Raises:
        ConfigError: missing or invalid file, unknown key, bad value.
    """
    data = config_data(path, overrides)
    try:
        return CrossModalConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc


@dataclass
class CrossModalResult:
    """Where a run wrote its model, and its held-out recall (empty without eval pairs)."""

    model_dir: Path
    metrics: dict[str, float]
    floor_metrics: dict[str, float]


def _image_embedder(cfg: CrossModalConfig) -> Embedder:
    model = load_model(cfg.image_model)
    if not isinstance(model, Embedder):
        raise ValueError(f"{cfg.image_model} is an ensemble; use a single image model")
    if cfg.image_size is not None and cfg.image_size != model.config.image_size:
        if model.config.neck != "gap":
            raise ValueError("image_size can only change for a model with a 'gap' neck")
        model.config = model.config.model_copy(update={"image_size": cfg.image_size})
    return model


class _PairDataset(torch.utils.data.Dataset):
    def __init__(self, pairs: CaptionDataset, transform) -> None:
        self.pairs, self.transform = pairs, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image, text = self.pairs[index]
        return self.transform(image), text


def _collate(batch):
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


class CrossModalTrainer:
    """Trains an :class:`ImageTower` and a :class:`TextEncoder` with ITC (+ MoD, + ITM).

    Args:
        cfg: the run's configuration.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
    """

    def __init__(self, cfg: CrossModalConfig, device: str = "auto") -> None:
        self.cfg = cfg
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.train_pairs = CaptionDataset(cfg.data_root, cfg.train_split)
        self.eval_pairs = CaptionDataset(cfg.data_root, cfg.eval_split) if cfg.eval_split else None
        if len(self.train_pairs) < cfg.batch_size:
            raise ValueError(
                f"{len(self.train_pairs)} training pairs are fewer than batch_size {cfg.batch_size}"
            )
        self.caption_ids = {t: i for i, t in enumerate(dict.fromkeys(self.train_pairs.texts))}
        self.image = ImageTower(_image_embedder(cfg), cfg.joint_dim).to(self.device)
        tower = build_text_tower(cfg.text_model, max_length=cfg.max_text_length)
        if cfg.lock_text:
            tower.lock()
        self.text = TextEncoder(tower, cfg.joint_dim, cfg.temperature, itm=cfg.itm)
        self.text.to(self.device)
        if cfg.lock_image_backbone:
            for p in self.image.embedder.parameters():
                p.requires_grad_(False)
        # The momentum copies share a frozen text tower instead of copying its weights.
        memo = {id(tower): tower} if cfg.lock_text else {}
        self.image_m = copy.deepcopy(self.image).requires_grad_(False)
        self.text_m = copy.deepcopy(self.text, memo).requires_grad_(False)
        self.image_queue = FeatureQueue(cfg.joint_dim, cfg.queue_size, seed=cfg.seed).to(
            self.device
        )
        self.text_queue = FeatureQueue(cfg.joint_dim, cfg.queue_size, seed=cfg.seed + 1).to(
            self.device
        )
        pre = resolve_preprocessing(self.image.embedder.config)
        self.eval_transform = build_eval_transform(pre["image_size"], pre["mean"], pre["std"])
        augment = AugmentConfig(hflip=0.5, perspective=0.0, jpeg_prob=0.0, rotate_degrees=0.0)
        self.train_transform = build_train_transform(
            pre["image_size"], pre["mean"], pre["std"], augment
        )
        groups = [
            {
                "params": [p for p in self.image.embedder.parameters() if p.requires_grad],
                "lr": cfg.lr,
            },
            {
                "params": [*self.image.proj.parameters(), *self.text.proj.parameters()]
                + [self.text.temperature]
                + ([*self.text.itm.parameters()] if self.text.itm is not None else []),
                "lr": cfg.head_lr,
            },
        ]
        if not cfg.lock_text:
            groups.append({"params": list(tower.parameters()), "lr": cfg.text_lr})
        groups = [g for g in groups if g["params"]]
        for g in groups:
            g["initial_lr"] = g["lr"]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        self.scheduler = CosineLRScheduler(
            self.optimizer,
            t_initial=cfg.steps,
            warmup_t=cfg.warmup_steps,
            warmup_lr_init=1e-7,
            t_in_epochs=False,
        )
        self.run_dir = Path(cfg.output_dir) / cfg.name

    def _momentum_step(self) -> None:
        m = self.cfg.momentum
        momentum_update(self.image, self.image_m, m)
        momentum_update(self.text.proj, self.text_m.proj, m)
        if not self.cfg.lock_text:
            momentum_update(self.text.tower, self.text_m.tower, m)

    def step(self, images: torch.Tensor, texts: list[str], step: int) -> dict[str, float]:
        """One optimisation step on a batch of pairs; returns its losses."""
        cfg = self.cfg
        # Pairs with the same caption are positives of each other (see itc_loss).
        ids = torch.tensor([self.caption_ids[t] for t in texts], dtype=torch.long)
        self.image.train()
        self.text.train()
        images = images.to(self.device)
        image_feat = self.image(images)
        text_feat = self.text(texts)
        temperature = self.text.temperature
        if cfg.momentum_encoders:
            with torch.no_grad():
                self._momentum_step()
                image_feat_m = self.image_m(images)
                text_feat_m = self.text_m(texts)
            loss = itc_loss(
                image_feat,
                text_feat,
                image_feat_m,
                text_feat_m,
                temperature,
                self.image_queue.features,
                self.text_queue.features,
                alpha=cfg.alpha,
                ids=ids,
                queue_ids=self.text_queue.ids,
            )
        else:
            image_feat_m, text_feat_m = image_feat.detach(), text_feat.detach()
            loss = itc_loss(image_feat, text_feat, image_feat_m, text_feat_m, temperature, ids=ids)
        losses = {"itc": loss.item()}
        if self.text.itm is not None:
            neg_text, neg_image = itm_hard_negatives(image_feat, text_feat)
            pair_image = torch.cat([image_feat, image_feat, image_feat[neg_image]])
            pair_text = torch.cat([text_feat, text_feat[neg_text], text_feat])
            labels = (
                torch.cat([torch.ones(len(texts)), torch.zeros(2 * len(texts))])
                .long()
                .to(self.device)
            )
            itm_loss = F.cross_entropy(self.text.itm(pair_image, pair_text), labels)
            losses["itm"] = itm_loss.item()
            loss = loss + cfg.itm_weight * itm_loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step_update(step + 1)
        clamp_temperature(self.text.temperature)
        if cfg.momentum_encoders:
            self.image_queue.push(image_feat_m, ids)
            self.text_queue.push(text_feat_m, ids)
        losses["loss"] = loss.item()
        losses["temperature"] = self.text.temperature.item()
        return losses

    @torch.inference_mode()
    def evaluate(self) -> dict[str, float]:
        """R@1/5/10 both ways on the held-out pairs (and after ITM re-ranking, with ITM)."""
        if self.eval_pairs is None:
            return {}
        self.image.eval()
        self.text.eval()
        loader = DataLoader(
            _PairDataset(self.eval_pairs, self.eval_transform),
            batch_size=64,
            collate_fn=_collate,
            num_workers=self.cfg.num_workers,
        )
        image_feat, text_feat = [], []
        for images, texts in loader:
            image_feat.append(self.image(images.to(self.device)).float().cpu())
            text_feat.append(self.text(texts).float().cpu())
        img = torch.cat(image_feat).numpy()
        txt = torch.cat(text_feat).numpy()
        metrics = retrieval_recall(img, txt)
        if self.text.itm is not None:
            reranked = itm_rerank_scores(img, txt, self.text.itm.cpu(), self.cfg.itm_top_k)
            self.text.itm.to(self.device)
            metrics.update(
                {f"itm_{k}": v for k, v in retrieval_recall(img, txt, scores=reranked).items()}
            )
        return metrics

    def fit(self, progress: bool = True) -> CrossModalResult:
        """Train ``steps`` steps, evaluate, save; returns where and how well."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump()), "utf-8")
        floor = self.evaluate()
        generator = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(
            _PairDataset(self.train_pairs, self.train_transform),
            batch_size=cfg.batch_size,
            shuffle=True,
            drop_last=True,
            generator=generator,
            collate_fn=_collate,
            num_workers=cfg.num_workers,
        )
        log = open(self.run_dir / "log.jsonl", "w", encoding="utf-8")  # noqa: SIM115
        step, start = 0, time.perf_counter()
        bar = tqdm(total=cfg.steps, desc=cfg.name, disable=not progress, unit="step")
        try:
            while step < cfg.steps:
                for images, texts in loader:
                    losses = self.step(images, texts, step)
                    step += 1
                    bar.update(1)
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        record = {
                            "step": step,
                            **losses,
                            "lr": self.optimizer.param_groups[0]["lr"],
                        }
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                        bar.set_postfix(loss=f"{losses['loss']:.3f}")
                    if step >= cfg.steps:
                        break
        finally:
            bar.close()
            log.close()
        metrics = self.evaluate()
        summary = {
            "steps": cfg.steps,
            "train_minutes": (time.perf_counter() - start) / 60,
            "metrics": metrics,
            "floor_metrics": floor,
        }
        (self.run_dir / "metrics.json").write_text(json.dumps(summary, indent=2), "utf-8")
        model_dir = save_crossmodal(
            self.run_dir / "model",
            self.image.cpu().eval(),
            self.text.cpu().eval(),
            text_trained=not cfg.lock_text,
            metadata={"config": cfg.model_dump(), "metrics": metrics},
        )
        return CrossModalResult(model_dir=model_dir, metrics=metrics, floor_metrics=floor)
