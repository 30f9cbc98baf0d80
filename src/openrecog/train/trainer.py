"""One Trainer on plain PyTorch: margin-loss metric learning with exact resume."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from timm.optim import param_groups_layer_decay
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from openrecog.config import INITIAL_TEACHER, DataConfig, ExperimentConfig, LossConfig
from openrecog.data.datasets import AugmentedDataset
from openrecog.data.factory import build_eval_dataset, build_train_dataset
from openrecog.data.samplers import ClassBalancedBatchSampler, ShuffledBatchSampler
from openrecog.data.shards import ShardIndex, build_shard_loader
from openrecog.data.transforms import build_train_transform
from openrecog.eval.classify import evaluate_classifier, target_indices
from openrecog.eval.evaluate import evaluate_model
from openrecog.losses import build_head
from openrecog.models import (
    Embedder,
    create_model,
    create_model_from_trained,
    resolve_preprocessing,
    save_artifact,
)
from openrecog.models.budget import check_param_budget, count_parameters
from openrecog.models.classifier import Classifier, save_classifier_head
from openrecog.models.pca import PCAProjection
from openrecog.train.checkpoint import (
    capture_rng_state,
    list_checkpoints,
    load_checkpoint,
    load_head_shards,
    restore_rng_state,
    save_checkpoint,
)
from openrecog.train.distill import (
    build_distillation,
    distillation_loss,
    refresh_initial_teacher,
)
from openrecog.train.distributed import (
    RankSliceBatchSampler,
    average_gradients,
    barrier,
    broadcast_module,
    clip_grad_norm,
    init_distributed,
    local_device,
)
from openrecog.train.mixing import mix_batch
from openrecog.train.schedule import (
    Stage,
    build_lr_scheduler,
    margin_at,
    phase_at,
    resolve_stages,
    stage_at,
)

SELECTION_METRIC = "map@5"
CLASSIFY_SELECTION_METRIC = "top1"  # loss.name=ce: closed-set accuracy on the eval split


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    steps: int
    best_metrics: dict[str, float] = field(default_factory=dict)
    final_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    rank: int = 0


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA if available else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def param_groups(
    modules: dict[str, nn.Module], lrs: dict[str, float], weight_decay: float
) -> list[dict]:
    """Optimizer groups per module, without weight decay on biases and norm parameters."""
    groups = []
    for name, module in modules.items():
        decay, no_decay = [], []
        for param in module.parameters():
            if param.requires_grad:
                (no_decay if param.ndim <= 1 else decay).append(param)
        for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, "_no_decay")):
            if params:
                groups.append(
                    {
                        "params": params,
                        "lr": lrs[name],
                        "weight_decay": wd,
                        "name": name + suffix,
                        "module": name,
                    }
                )
    return groups


def layer_decay_groups(
    backbone: nn.Module, lr: float, weight_decay: float, layer_decay: float
) -> list[dict]:
    """Backbone groups whose lr falls by ``layer_decay`` per layer from the top (timm's grouping).

    Each group carries timm's ``lr_scale``, which timm's schedulers apply on every update.
    """
    groups = param_groups_layer_decay(backbone, weight_decay=weight_decay, layer_decay=layer_decay)
    for index, group in enumerate(groups):
        group.update(lr=lr, name=f"backbone_layer{index}", module="backbone")
    return groups


class Trainer:
    """Trains an :class:`Embedder` with a margin head on a class-balanced stream of views.

    Under ``torchrun`` every process is one rank: the backbone is data-parallel (each rank
    trains on its slice of a global batch of ``world_size × train.batch_size`` and gradients
    are averaged), the PartialFC head is model-parallel (each rank owns a shard of the class
    centres). Rank 0 logs, evaluates and saves artifacts; checkpoints hold every rank's shard
    and can be resumed on a different number of ranks.

    Args:
        config: the validated experiment config.
        run_dir: output folder (default ``<output_dir>/<name>``).
        resume: ``True`` to continue from the newest checkpoint in ``run_dir``, or a path.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        run_dir: str | Path | None = None,
        resume: bool | str = False,
    ) -> None:
        tc = config.train
        self.run_dir = Path(run_dir or Path(tc.output_dir) / tc.name)
        self.dist = init_distributed(tc.device)
        self.device = resolve_device(local_device(self.dist, tc.device))
        if tc.threads:
            torch.set_num_threads(tc.threads)
        _seed_everything(tc.seed)

        if config.model.init_from:
            model = create_model_from_trained(config.model)
            # Record the architecture actually trained, so artifacts and resume checks see it.
            config = config.model_copy(update={"model": model.config})
        else:
            model = create_model(config.model)
        self.config = config
        self.model: Embedder = model.to(self.device)
        self.memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=self.memory_format)
        pre = resolve_preprocessing(config.model)
        self.preprocessing = pre
        self.eval_data = build_eval_dataset(config.eval, pre["image_size"])
        world = self.dist.world_size
        self.train_base = None
        self.shards: ShardIndex | None = None
        self.sampler: (
            ClassBalancedBatchSampler | ShuffledBatchSampler | RankSliceBatchSampler | None
        ) = None
        self.classify = config.loss.name == "ce"
        if self.classify and config.data.source == "shards":
            raise ValueError("loss.name=ce needs a listed dataset (data.source folder or csv)")
        if config.data.source == "shards":
            self.shards = _load_shards(config)
            self.num_train_classes = self.shards.num_classes
            # A stream has no epochs of its own: one "epoch" is one pass worth of views.
            views = self.shards.num_samples * config.data.views_per_instance
            self.steps_per_epoch = max(1, views // (tc.batch_size * world))
        else:
            self.train_base = build_train_dataset(config.data, pre["image_size"])
            self.num_train_classes = len(self.train_base.class_names)
            # Instance-as-class: each "class" is one image, shown as K augmented views per batch.
            if world > 1:
                _check_global_batch(
                    tc.batch_size, views_per_class(config.data), world, self.num_train_classes
                )
            if self.classify:
                # Classification needs no fixed number of images per class in a batch.
                sampler = ShuffledBatchSampler(len(self.train_base), tc.batch_size, tc.seed)
            else:
                sampler = class_balanced_sampler(
                    config, self.train_base.labels, tc.batch_size * world
                )
            self.sampler = sampler
            if world > 1:
                self.sampler = RankSliceBatchSampler(sampler, tc.batch_size, self.dist.rank, world)
            self.steps_per_epoch = len(self.sampler)
            if self.classify and self.eval_data is not None:
                # Fail now, not after training, if the eval classes are not the trained ones.
                target_indices(self.eval_data, self.train_base.class_names)
        self._loaders: dict[int, DataLoader] = {}
        lc = config.loss
        self.head = build_head(
            lc.name,
            self.model.embedding_dim,
            self.num_train_classes,
            s=lc.s,
            m=lc.m,
            m1=lc.m1,
            m2=lc.m2,
            m3=lc.m3,
            sample_rate=lc.sample_rate,
            easy_margin=lc.easy_margin,
            seed=tc.seed,
            rank=self.dist.rank,
            world_size=world,
            **_classifier_options(lc),
        ).to(self.device)
        if self.classify:
            # The classifier's head is part of what a closed-set model ships.
            check_param_budget(
                count_parameters(self.model) + count_parameters(self.head),
                config.model.max_params,
                f"classifier {config.model.backbone} + {config.model.neck} + ce head",
            )
        self.margin_cap: float | None = None
        if lc.margin_start is not None:
            if not hasattr(self.head, "margin_loss") or self.head.margin_loss.margin_attr is None:
                raise ValueError(f"loss.margin_start needs a margin loss, not loss.name={lc.name}")
            self.margin_cap = self.head.margin_loss.margin
            if lc.margin_start > self.margin_cap:
                raise ValueError(
                    f"loss.margin_start={lc.margin_start} exceeds the final margin "
                    f"{self.margin_cap} (loss.m)"
                )
        distill = build_distillation(config.distill, self.model, pre["mean"], pre["std"])
        self.teacher = None
        self.distill_proj: nn.Module | None = None
        if distill is not None:
            teacher, projection = distill
            self.teacher = teacher.to(self.device, self.memory_format)
            self.distill_proj = projection.to(self.device)
        head_lr = tc.head_lr or tc.lr
        modules: dict[str, nn.Module] = {
            "backbone": self.model.backbone,
            "neck": self.model.neck,
            "head": self.head,
        }
        if self.distill_proj is not None:
            modules["distill"] = self.distill_proj
        if tc.layer_decay is not None:
            del modules["backbone"]
            groups = layer_decay_groups(
                self.model.backbone, tc.lr, tc.weight_decay, tc.layer_decay
            ) + param_groups(modules, dict.fromkeys(modules, head_lr), tc.weight_decay)
        else:
            groups = param_groups(
                modules,
                {"backbone": tc.lr, **{k: head_lr for k in modules if k != "backbone"}},
                tc.weight_decay,
            )
        if tc.optimizer == "adamw":
            # The fused kernel is one pass over each tensor instead of a dozen: on CPU it
            # makes the update of a million class centres ~8× faster (bench/partial_fc.py).
            fused = self.device.type in ("cpu", "cuda")
            self.optimizer: torch.optim.Optimizer = torch.optim.AdamW(groups, lr=tc.lr, fused=fused)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=tc.lr, momentum=tc.momentum, nesterov=True)
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.stages: list[Stage] = resolve_stages(tc, pre["image_size"], self.steps_per_epoch)
        self.total_steps = self.stages[-1].end
        self.step = 0
        self.stage: Stage | None = None
        self.neck_init: dict[str, float] = {}  # PCA start of the neck, if one was made
        if tc.neck_init_images and not resume and not config.model.init_from:
            if self.train_base is None:
                raise ValueError("train.neck_init_images needs a listed dataset, not shards")
            self.neck_init = init_neck_from_pca(
                self.model,
                self.train_base,
                tc.neck_init_images,
                tc.batch_size,
                whiten=tc.neck_init_whiten,
                whiten_power=tc.neck_init_whiten_power,
            )
        # Identical replicas from the start, whatever each rank's RNG or PCA did.
        broadcast_module(self.model, self.dist)
        self.initial_teacher = config.distill.teacher == INITIAL_TEACHER
        if self.initial_teacher:
            refresh_initial_teacher(self.teacher, self.model)
        if self.distill_proj is not None:
            broadcast_module(self.distill_proj, self.dist)
        # After the neck's PCA start: the average begins from the weights training begins from.
        self.ema: ModelEmaV3 | None = None
        if tc.ema_decay is not None:
            # timm's warmup makes the EMA follow the weights closely early on, so short runs
            # do not end up averaging mostly the untrained start.
            self.ema = ModelEmaV3(self.model, decay=tc.ema_decay, use_warmup=True)
        self.last_losses: dict[str, float] = {}
        self._writer: SummaryWriter | None = None
        self._log = None
        self.best: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self._last_eval: tuple[int, dict[str, float]] = (-1, {})
        if resume:
            self._resume(resume)
        self._enter_stage()

    # ----------------------------------------------------------------- schedule
    def _enter_stage(self) -> Stage:
        """Make the stage of the current step active and set this step's learning rates."""
        stage = stage_at(self.stages, self.step)
        if stage != self.stage:
            self.stage = stage
            self.scheduler = build_lr_scheduler(
                self.optimizer, self.config.train, stage, self.base_lrs
            )
            for model in self._models():
                if model.config.image_size != stage.image_size:
                    # Only a gap neck reaches here (config check): it fits any input size.
                    model.config = model.config.model_copy(update={"image_size": stage.image_size})
        self.scheduler.step_update(self.step - stage.start)
        if phase_at(self.config.train, self.step) == "backbone":
            for group in self.optimizer.param_groups:
                if group["module"] == "backbone":
                    group["lr"] *= self.config.train.alternate_backbone_lr_scale
        return stage

    def _models(self) -> list[Embedder]:
        return [self.model] + ([self.ema.module] if self.ema is not None else [])

    @property
    def eval_model(self) -> Embedder:
        """The model that is evaluated and saved: the EMA of the weights if there is one."""
        return self.ema.module if self.ema is not None else self.model

    def _loader(self, image_size: int) -> DataLoader:
        """The training loader for views of ``image_size`` (one per size, kept for reuse)."""
        if image_size not in self._loaders:
            pre, cfg = self.preprocessing, self.config.data
            transform = build_train_transform(image_size, pre["mean"], pre["std"], cfg.augment)
            if self.shards is not None:
                self._loaders[image_size] = build_shard_loader(
                    self.shards,
                    transform,
                    self.config.train.batch_size,
                    views=cfg.views_per_instance,
                    shuffle_buffer=cfg.shuffle_buffer,
                    num_workers=cfg.num_workers,
                    seed=self.config.train.seed,
                    rank=self.dist.rank,
                    world_size=self.dist.world_size,
                    start_step=self.step,
                    pin_memory=self.device.type == "cuda",
                )
                return self._loaders[image_size]
            self._loaders[image_size] = DataLoader(
                AugmentedDataset(self.train_base, transform),
                batch_sampler=self.sampler,
                num_workers=cfg.num_workers,
                worker_init_fn=_single_thread_worker,
                # The batch sampler runs in this process, so set_epoch() reaches it even
                # though workers persist; restarting workers each (short) epoch costs seconds.
                persistent_workers=cfg.num_workers > 0,
            )
        return self._loaders[image_size]

    # ----------------------------------------------------------------- checkpoints
    def _head_optimizer_indices(self) -> dict[int, str]:
        """Positions of the head's parameters in the optimizer's state dict, with their names."""
        names = {id(param): name for name, param in self.head.named_parameters()}
        found, position = {}, 0
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                if id(param) in names:
                    found[position] = names[id(param)]
                position += 1
        return found

    def state_dict(self) -> dict[str, Any]:
        """Rank 0's share of a checkpoint: everything but the head shards."""
        optimizer = self.optimizer.state_dict()
        head_positions = self._head_optimizer_indices()
        optimizer["state"] = {
            k: v for k, v in optimizer["state"].items() if k not in head_positions
        }
        return {
            "step": self.step,
            "world_size": self.dist.world_size,
            "model": self.model.state_dict(),
            "distill": self.distill_proj.state_dict() if self.distill_proj is not None else None,
            # teacher: initial is the start of this run, which a resumed run cannot rebuild.
            "teacher": self.teacher.model.state_dict() if self.initial_teacher else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "optimizer": optimizer,
            "sampler": None
            if self.sampler is None
            else {
                "epoch": self.step // self.steps_per_epoch,
                "start_batch": self.step % self.steps_per_epoch,
                "seed": self.sampler.seed,
            },
            "rng": capture_rng_state(),
            "best": self.best,
            "history": self.history,
            "config": self.config.model_dump(mode="json"),
        }

    def shard_state_dict(self) -> dict[str, Any]:
        """This rank's share of a checkpoint: its class centres, their optimizer state, RNG."""
        state = self.optimizer.state_dict()["state"]
        head_positions = self._head_optimizer_indices()
        return {
            "head": self.head.state_dict(),
            "optimizer": {name: state[k] for k, name in head_positions.items() if k in state},
            "class_start": self.head.class_start,
            "num_local": self.head.num_local,
            "num_classes": self.head.num_classes,
            "rank": self.dist.rank,
            "world_size": self.dist.world_size,
            "rng": capture_rng_state(),
        }

    def _resume(self, resume: bool | str) -> None:
        if resume is True:
            found = list_checkpoints(self.run_dir / "checkpoints")
            if not found:
                raise FileNotFoundError(f"nothing to resume: no checkpoints in {self.run_dir}")
            path = found[-1]
        else:
            path = Path(resume)
        state = load_checkpoint(path)
        if state.get("config", {}).get("model") != self.config.model.model_dump(mode="json"):
            raise ValueError(f"{path}: checkpoint was made with a different model config")
        self.model.load_state_dict(state["model"])
        if self.distill_proj is not None:
            if state.get("distill") is None:
                raise ValueError(f"{path}: checkpoint was made without distillation")
            self.distill_proj.load_state_dict(state["distill"])
        if self.initial_teacher:
            if state.get("teacher") is None:
                raise ValueError(f"{path}: checkpoint was made without distill.teacher=initial")
            self.teacher.model.load_state_dict(state["teacher"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"{path}: checkpoint was made without train.ema_decay")
            self.ema.module.load_state_dict(state["ema"])
        optimizer = state["optimizer"]
        rng = state["rng"]
        if "head" in state:  # a single-file checkpoint of an earlier version: one rank
            self.head.load_state_dict(state["head"])
        else:
            head, head_optimizer, shard_rng = self._load_head_shards(path, state["step"])
            rng = shard_rng or rng
            positions = {name: k for k, name in self._head_optimizer_indices().items()}
            optimizer["state"].update({positions[n]: v for n, v in head_optimizer.items()})
            self.head.load_state_dict(head, strict="_extra_state" in head)
        self.optimizer.load_state_dict(optimizer)
        if self.sampler is not None and state.get("sampler"):
            self.sampler.load_state_dict(state["sampler"])
        restore_rng_state(rng)
        self.step = state["step"]
        self.best = state["best"]
        self.history = state["history"]

    def _load_head_shards(
        self, path: Path, step: int
    ) -> tuple[dict[str, torch.Tensor], dict[str, dict], dict | None]:
        """This rank's head weights, optimizer state and RNG; reshards across world sizes."""
        shards = load_head_shards(path)
        rank, world = self.dist.rank, self.dist.world_size
        if len(shards) == world:
            mine = shards[rank]
            return mine["head"], mine["optimizer"], mine["rng"]
        num_classes = {shard["num_classes"] for shard in shards}
        if num_classes != {self.head.num_classes} or not hasattr(self.head, "_generator"):
            raise ValueError(
                f"{path}: cannot reshard a head of {sorted(num_classes)} classes from "
                f"{len(shards)} to {world} ranks for {self.head.num_classes} classes"
            )
        start, count = self.head.class_start, self.head.num_local

        def rows(tensors: list[torch.Tensor]) -> torch.Tensor:
            # Shards are contiguous class ranges in rank order: concatenating restores the
            # full table, from which this rank cuts its new range.
            return torch.cat(tensors)[start : start + count].clone()

        head = {
            key: rows([shard["head"][key] for shard in shards])
            for key in shards[0]["head"]
            if key != "_extra_state"
        }
        optimizer: dict[str, dict] = {}
        for name, first in shards[0]["optimizer"].items():
            optimizer[name] = {
                key: (
                    rows([shard["optimizer"][name][key] for shard in shards])
                    if torch.is_tensor(value) and value.ndim >= 1
                    else value
                )
                for key, value in first.items()
            }
        # The sampling stream cannot continue across a different sharding: start a fresh one.
        self.head._generator.manual_seed(self.config.train.seed + 7919 * step + rank)
        return head, optimizer, shards[rank]["rng"] if rank < len(shards) else None

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of the current step (every rank calls this)."""
        return save_checkpoint(
            self.state_dict() if self.dist.is_main else None,
            self.shard_state_dict(),
            self.run_dir / "checkpoints",
            self.step,
            self.config.train.keep_checkpoints,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            barrier=lambda: barrier(self.dist),
        )

    # ----------------------------------------------------------------- training
    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One optimisation step; returns the loss."""
        tc = self.config.train
        stage = self.stage  # kept current by __init__ and the end of each step
        phase = phase_at(tc, self.step)
        frozen = phase == "head"
        self.model.train()
        # Linear probing (LP-FT, alternating): a frozen backbone keeps its BN statistics too,
        # and so does a frozen neck.
        self.model.backbone.train(not frozen)
        if tc.freeze_bn_stats:
            freeze_batchnorm_statistics(self.model.backbone)
        self.model.neck.train(phase != "backbone")
        self.head.train()
        margin = margin_at(
            self.config.loss, self.margin_cap or 0.0, self.step, self.steps_per_epoch
        )
        if margin is not None:
            self.head.margin_loss.set_margin(margin)
        mixed = mix_batch(
            images,
            labels,
            stage.mixup_alpha,
            stage.cutmix_alpha,
            tc.mix_prob,
            np.random.default_rng([tc.seed, self.step]),
        )
        images = mixed.images.to(self.device, memory_format=self.memory_format)
        labels = mixed.labels_a.to(self.device)
        autocast = (
            torch.autocast(
                self.device.type, dtype=torch.bfloat16 if tc.autocast == "bf16" else torch.float16
            )
            if tc.autocast != "none"
            else nullcontext()
        )
        with autocast:
            with torch.no_grad() if frozen else nullcontext():
                features = self.model.forward_features(images)
            embeddings = self.model.forward_head(features).float()
        margin_loss = self.head(embeddings, labels)
        if mixed.mixed:
            other = self.head(embeddings, mixed.labels_b.to(self.device))
            margin_loss = mixed.lam * margin_loss + (1.0 - mixed.lam) * other
        loss = margin_loss
        self.last_losses = {"loss/margin": margin_loss.item()}
        if margin is not None:
            self.last_losses["margin"] = margin
        if self.teacher is not None and self.distill_proj is not None:
            with autocast:
                # Until the trunk first trains it is the teacher's too: run only its neck.
                if self.initial_teacher and self.step < tc.freeze_backbone_steps:
                    target = self.teacher.from_features(features)
                else:
                    target = self.teacher(images)
            dc = self.config.distill
            distill = distillation_loss(
                self.distill_proj(embeddings), target.float(), dc.kind, dc.temperature
            )
            loss = loss + self.config.distill.weight * distill
            self.last_losses["loss/distill"] = distill.item()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"loss became {loss.item()} at step {self.step}; lower train.lr"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if phase == "backbone":
            # No gradient means no update at all: AdamW skips the step and the weight decay.
            for group in self.optimizer.param_groups:
                if group["module"] != "backbone":
                    for param in group["params"]:
                        param.grad = None
        replicated = [
            p for g in self.optimizer.param_groups if g["module"] != "head" for p in g["params"]
        ]
        average_gradients(replicated, self.dist)
        if tc.grad_clip:
            if self.dist.enabled:
                clip_grad_norm(replicated, self.head.parameters(), tc.grad_clip, self.dist)
            else:
                params = [p for g in self.optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        self.optimizer.step()
        # Each rank's BatchNorm saw only its slice: keep rank 0's statistics, as DDP does.
        broadcast_module(self.model, self.dist, buffers_only=True)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        self._enter_stage()
        return loss.item()

    def evaluate(self) -> dict[str, float]:
        """Metrics of the current model on the evaluation set (empty if none)."""
        if self.eval_data is None:
            return {}
        ec = self.config.eval
        if self.classify:
            metrics = evaluate_classifier(
                self.classifier(),
                self.eval_data,
                self.train_base.class_names,
                batch_size=ec.batch_size,
                device=str(self.device),
            )
            self.model.train()
            return metrics
        metrics = evaluate_model(
            self.eval_model,
            self.eval_data,
            batch_size=ec.batch_size,
            target_far=ec.target_far,
            device=str(self.device),
        )
        self.model.train()
        return metrics

    def classifier(self) -> Classifier:
        """The evaluated model with the ``ce`` head (``loss.name=ce`` only)."""
        if not self.classify:
            raise ValueError("a classifier needs loss.name=ce")
        return Classifier(self.eval_model, self.head, self.train_base.class_names)

    def _save(self, folder: Path, metrics: dict[str, float]) -> None:
        """Save the evaluated model (and, when classifying, its head) as an artifact."""
        save_artifact(self.eval_model, folder, metadata=self._metadata(metrics))
        if self.classify:
            save_classifier_head(self.head, folder, self.train_base.class_names)

    def fit(self) -> TrainResult:
        """Train to ``total_steps``, evaluating, checkpointing and keeping the best artifact."""
        tc = self.config.train
        main = self.dist.is_main
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(
                yaml.safe_dump(self.config.model_dump(mode="json"), sort_keys=False),
                encoding="utf-8",
            )
        previous_precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(tc.matmul_precision)
        self._writer = SummaryWriter(str(self.run_dir / "tensorboard")) if main else None
        self._log = open(self.run_dir / "log.jsonl", "a", encoding="utf-8") if main else None
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=tc.name,
            disable=not (tc.progress and main),
            unit="step",
            dynamic_ncols=True,
        )
        final: dict[str, float] = {}
        try:
            while self.step < self.total_steps:
                stage = self.stage
                if self.sampler is not None:
                    epoch, start = divmod(self.step, self.steps_per_epoch)
                    self.sampler.set_epoch(epoch, start)
                tick = time.perf_counter()
                for images, labels in self._loader(stage.image_size):
                    loss = self.train_step(images, labels)
                    now = time.perf_counter()
                    # Images per second of the whole job: every rank runs one slice.
                    throughput = images.shape[0] * self.dist.world_size / max(now - tick, 1e-9)
                    tick = now
                    lr = self.optimizer.param_groups[0]["lr"]
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", img_s=f"{throughput:.1f}")
                    if self.step % tc.log_every == 0 or self.step == self.total_steps:
                        record = {
                            "step": self.step,
                            "loss": loss,
                            "lr": lr,
                            "img_per_s": throughput,
                            **self.last_losses,
                        }
                        self._record(record, "train")
                    if self.config.eval.every and self.step % self.config.eval.every == 0:
                        self._evaluate_and_keep()
                    if self.step % tc.checkpoint_every == 0:
                        self.save_checkpoint()
                    if self.step >= stage.end:
                        break  # the next stage may need another loader
            # The loop may just have evaluated/checkpointed this very step: don't repeat it.
            final = (
                self._last_eval[1] if self._last_eval[0] == self.step else self._evaluate_and_keep()
            )
            if self.step % tc.checkpoint_every:
                self.save_checkpoint()
            if main:
                self._save(self.run_dir / "last", final)
            barrier(self.dist)
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.close()
            if self._log is not None:
                self._log.close()
            torch.set_float32_matmul_precision(previous_precision)
        return TrainResult(
            self.run_dir, self.step, self.best, final, self.history, rank=self.dist.rank
        )

    def _record(self, record: dict[str, float], prefix: str) -> None:
        """Append to log.jsonl and TensorBoard (rank 0 only)."""
        if self._log is None or self._writer is None:
            return
        self._log.write(json.dumps(record) + "\n")
        self._log.flush()
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                name = key.removeprefix(f"{prefix}/")
                self._writer.add_scalar(f"{prefix}/{name}", value, self.step)

    def _evaluate_and_keep(self) -> dict[str, float]:
        """Evaluate on rank 0 (the others wait) and keep the best artifact."""
        if not self.dist.is_main:
            barrier(self.dist)
            self._last_eval = (self.step, {})
            return {}
        metrics = self.evaluate()
        self._last_eval = (self.step, metrics)
        self.history.append({"step": self.step, **{f"eval/{k}": v for k, v in metrics.items()}})
        self._record(self.history[-1], "eval")
        key = CLASSIFY_SELECTION_METRIC if self.classify else SELECTION_METRIC
        score = metrics.get(key, -math.inf) if metrics else self.step
        if not self.best or score >= self.best.get(key, -math.inf):
            self.best = {**metrics, "step": self.step}
            self._save(self.run_dir / "best", metrics)
        barrier(self.dist)
        return metrics

    def _metadata(self, metrics: dict[str, float]) -> dict[str, Any]:
        return {
            "run": str(self.run_dir),
            "step": self.step,
            "train_classes": self.num_train_classes,
            "eval": metrics,
            "threshold": metrics.get("threshold"),
        }


@torch.no_grad()
def init_neck_from_pca(
    model: Embedder,
    dataset,
    num_images: int,
    batch_size: int = 32,
    whiten: bool = False,
    whiten_power: float = 1.0,
) -> dict[str, float]:
    """Set a ``gap`` neck's Linear to the PCA of pooled backbone features of training images.

    A random projection of ImageNet features throws away much of what makes them good for
    retrieval, and a short CPU run cannot win it back; starting from the principal subspace
    means the untrained model already retrieves about as well as the raw features.
    ``whiten`` also divides every axis by its standard deviation on those images (to
    ``whiten_power``; 1 is full whitening): the few directions of largest variance in pooled
    CNN features are shared by most images (background, brightness), and equalising them
    helps retrieval (Jégou & Chum 2012; Radenović et al. 2018). It is what a BatchNorm after
    the Linear converges to, built in from the start, so the untrained model, and a
    ``teacher: initial`` copy of it, already have it. A model with a tap gate
    (``model.tap_gate``) has the gate fitted first, on the same images, telling the first
    part of a :class:`~openrecog.data.datasets.ConcatClassDataset` (the main data) from the
    others (``extra_folders``); the PCA is then of the gated features.
    Returns the fit statistics (images used, explained variance, the gate's accuracy).
    """
    from torch.utils.data import Subset

    from openrecog.models.encoder import ImageEncoder
    from openrecog.models.taps import fit_tap_gate

    neck = model.neck
    if neck.kind != "gap" or not isinstance(neck.fc, nn.Linear):
        raise ValueError(
            "train.neck_init_images needs model.neck=gap, model.projection=linear and an "
            "embedding_dim"
        )
    if num_images <= neck.fc.out_features:
        raise ValueError(
            f"train.neck_init_images={num_images} must exceed model.embedding_dim="
            f"{neck.fc.out_features} (PCA needs more images than components)"
        )
    indices = spread_indices(len(dataset), num_images)
    gated = model.taps is not None and model.taps.gate is not None
    if gated and not hasattr(dataset, "part_of"):
        raise ValueError(
            "model.tap_gate is fitted to tell the main training data from data.extra_folders; "
            "set data.extra_folders"
        )
    was_training = model.training
    feature_model = PooledFeatures(model, parts=gated).eval()
    device = str(next(model.parameters()).device)
    features = ImageEncoder(feature_model, batch_size=batch_size, device=device).encode_dataset(
        Subset(dataset, indices)
    )
    model.train(was_training)
    stats: dict[str, float] = {}
    if gated:
        parts = list(torch.as_tensor(features).split(model.tap_part_widths(), dim=1))
        is_main = np.array([dataset.part_of(i) == 0 for i in indices], dtype=np.float64)
        stats.update(fit_tap_gate(model.taps, parts[0], is_main))
        features = model.taps.join([part.to(device) for part in parts]).cpu().numpy()
    pca, scale, fit = pca_start(features, neck.fc.out_features, whiten_power if whiten else None)
    stats.update(fit)
    # fc(x) = W x + b on raw features; the PCA works on L2-normalised ones, so fold a
    # typical feature norm into W to keep the same directions at the right scale.
    norm = float(np.median(np.linalg.norm(features, axis=1)))
    neck.fc.weight.copy_(pca.components * scale[:, None] / norm)
    neck.fc.bias.copy_(-(pca.components @ pca.mean) * scale)
    return {**stats, "images": float(len(features))}


@torch.no_grad()
def pca_start(
    features: np.ndarray, out_dim: int, whiten_power: float | None = None
) -> tuple[PCAProjection, torch.Tensor, dict[str, float]]:
    """The neck's PCA start: ``(pca, scale, fit statistics)`` of ``(N, D)`` features.

    ``pca(x) * scale`` is the start's projection; ``scale`` is every principal axis's standard
    deviation on ``features`` to the power ``-whiten_power``, or ones without whitening.
    """
    pca = PCAProjection(features.shape[1], out_dim)
    stats = pca.fit(features)
    scale = torch.ones(out_dim)
    if whiten_power is not None:
        projected = pca(torch.as_tensor(features))
        scale = projected.std(dim=0).clamp_min(1e-6).pow(-whiten_power)
    return pca, scale, stats


def spread_indices(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(length)``, first and last included.

    Concatenated training sets (documents, then ``extra_folders``) are in blocks, so the
    sample must cover the whole range, not its first ``count`` steps: a fixed stride of
    ``length // count`` once took only documents for the PCA of a documents + objects set.
    """
    if count >= length:
        return list(range(length))
    return np.linspace(0, length - 1, count).round().astype(int).tolist()


class PooledFeatures(nn.Module):
    """Backbone + global average pooling, shaped like an Embedder for the ImageEncoder.

    With ``parts`` the taps' L2-normalised parts come out unweighted, side by side
    (:meth:`~openrecog.models.embedder.Embedder.forward_tap_parts`).
    """

    def __init__(self, model: Embedder, parts: bool = False) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        self.embedding_dim = model.neck.fc.in_features
        self.parts = parts

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` float32: the neck's input, or the taps' unweighted parts."""
        if not self.parts:
            return self.model.forward_features(images).mean(dim=(2, 3)).float()
        return torch.cat(self.model.forward_tap_parts(images), dim=1).float()


def views_per_class(data: DataConfig) -> int:
    """Images of each class in a batch; instance-as-class: K augmented views of one image."""
    return data.views_per_instance if data.instance_as_class else data.images_per_class


def class_balanced_sampler(
    config: ExperimentConfig, labels: Sequence[int], batch_size: int
) -> ClassBalancedBatchSampler:
    """The batch sampler of metric-learning training on ``labels`` (global ``batch_size``)."""
    return ClassBalancedBatchSampler(
        labels,
        batch_size,
        views_per_class(config.data),
        seed=config.train.seed,
        class_sampling_power=config.data.class_sampling_power,
    )


def freeze_batchnorm_statistics(module: nn.Module) -> None:
    """Put every BatchNorm layer in ``module`` into eval mode, so it keeps its statistics.

    Only the running mean and variance are frozen; the affine weights still get gradients.
    Unlike timm's ``freeze_batch_norm_2d`` the layers stay ``BatchNorm2d``, so artifacts and
    ONNX export see the same modules as without it. Call after every ``module.train()``.
    """
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.eval()


def _classifier_options(lc: LossConfig) -> dict[str, Any]:
    """The ``ce`` head's keyword arguments (none for the metric-learning losses)."""
    if lc.name != "ce":
        return {}
    return {
        "label_smoothing": lc.label_smoothing,
        "hidden_dim": lc.hidden_dim,
        "dropout": lc.dropout,
    }


def _load_shards(config: ExperimentConfig) -> ShardIndex:
    """The shard index of a streaming run; options that need a listed dataset are refused."""
    data = config.data
    if not data.root:
        raise ValueError("data.source=shards needs data.root=<folder with index.json>")
    unusable = {
        "data.extra_folders": bool(data.extra_folders),
        "data.max_images_per_class": data.max_images_per_class is not None,
        "data.min_images_per_class": data.min_images_per_class > 1,
        "data.class_sampling_power": data.class_sampling_power > 0,
    }
    named = [key for key, used in unusable.items() if used]
    if named:
        raise ValueError(f"{', '.join(named)}: not available with data.source=shards")
    if config.train.batch_size % data.views_per_instance:
        raise ValueError(
            f"train.batch_size={config.train.batch_size} must be a multiple of "
            f"data.views_per_instance={data.views_per_instance} with data.source=shards"
        )
    return ShardIndex.load(data.root)


def _check_global_batch(batch_size: int, per_class: int, world: int, num_classes: int) -> None:
    """Ranks must get equal, whole class groups, or collectives would wait forever."""
    if batch_size % per_class:
        raise ValueError(
            f"train.batch_size={batch_size} must be a multiple of the views/images per class "
            f"({per_class}) when training on {world} ranks"
        )
    if num_classes * per_class < batch_size * world:
        raise ValueError(
            f"{num_classes} training classes cannot fill a global batch of {world} ranks × "
            f"{batch_size}: lower train.batch_size or use fewer ranks"
        )


def _single_thread_worker(_: int) -> None:
    # Data workers share the cores with the training step; intra-op threads in every worker
    # oversubscribe the CPU and slow both down.
    torch.set_num_threads(1)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
