"""Batch samplers that put several views/images of each class in every batch."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class _ResumableEpochs:
    """Epoch / start-batch / seed bookkeeping shared by the batch samplers (exact resume)."""

    seed: int
    epoch: int
    start_batch: int

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's order and skip its first ``start_batch`` batches (resume)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def state_dict(self) -> dict[str, int]:
        """What an exact resume needs."""
        return {"epoch": self.epoch, "start_batch": self.start_batch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict`."""
        self.seed = state["seed"]
        self.set_epoch(state["epoch"], state["start_batch"])


class ClassBalancedBatchSampler(_ResumableEpochs, Sampler[list[tuple[int, int]]]):
    """Batches of ``batch_size // m_per_class`` classes × ``m_per_class`` items each.

    Classes with fewer than ``m`` images are drawn with repetition, so each repeat is another
    augmented view — with one image per class this *is* instance-as-class training with K=m
    views. With ``class_sampling_power = 0`` every class appears once per epoch (rare classes
    are oversampled relative to their share of images); with ``p > 0`` each batch draws its
    classes (without repetition inside the batch) with probability ∝ ``images^p``, so
    ``p = 1`` follows the natural class frequencies. Yields ``(index, augmentation_seed)`` pairs;
    the order is a pure function of ``(seed, epoch)``, so :meth:`state_dict` only needs the
    epoch and the position inside it for an exact resume.
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        m_per_class: int,
        seed: int = 0,
        drop_last: bool = True,
        class_sampling_power: float = 0.0,
    ) -> None:
        if m_per_class < 1 or batch_size < m_per_class:
            raise ValueError(f"need 1 <= m_per_class ({m_per_class}) <= batch_size ({batch_size})")
        by_class: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_class[int(label)].append(index)
        self.classes = sorted(by_class)
        self.by_class = {c: np.asarray(v) for c, v in by_class.items()}
        self.m = m_per_class
        self.classes_per_batch = batch_size // m_per_class
        if len(self.classes) < 2:
            raise ValueError("need at least 2 classes to train an embedding")
        self.classes_per_batch = min(self.classes_per_batch, len(self.classes))
        if class_sampling_power < 0:
            raise ValueError(f"class_sampling_power must be >= 0, got {class_sampling_power}")
        counts = np.array([len(self.by_class[c]) for c in self.classes], dtype=np.float64)
        weights = counts**class_sampling_power
        self.class_probs = weights / weights.sum()
        self.class_sampling_power = class_sampling_power
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    def __len__(self) -> int:
        full, rest = divmod(len(self.classes), self.classes_per_batch)
        return full + (0 if self.drop_last or rest == 0 else 1)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        """Yield the batches of the current epoch from ``start_batch`` on."""
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._class_batches(rng)
        if self.drop_last and batches and len(batches[-1]) < self.classes_per_batch:
            batches.pop()
        seeds = rng.integers(0, 2**31 - 1, size=(len(batches), self.classes_per_batch * self.m))
        for b, class_ids in enumerate(batches):
            # Draw for every batch even when skipping so RNG use never depends on start_batch.
            picks = []
            for ci in class_ids:
                pool = self.by_class[self.classes[ci]]
                replace = len(pool) < self.m
                picks.extend(rng.choice(pool, size=self.m, replace=replace).tolist())
            if b < self.start_batch:
                continue
            yield [(int(idx), int(s)) for idx, s in zip(picks, seeds[b], strict=False)]
        self.start_batch = 0

    def _class_batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        """The class indices of each batch of one epoch (``len(classes)`` class slots)."""
        n = len(self.classes)
        if self.class_sampling_power == 0:
            order = rng.permutation(n)
            return [
                order[i : i + self.classes_per_batch] for i in range(0, n, self.classes_per_batch)
            ]
        full, rest = divmod(n, self.classes_per_batch)
        sizes = [self.classes_per_batch] * full + ([rest] if rest else [])
        return [rng.choice(n, size=k, replace=False, p=self.class_probs) for k in sizes]


class ShuffledBatchSampler(_ResumableEpochs, Sampler[list[tuple[int, int]]]):
    """Plain shuffled batches of ``batch_size`` items: one epoch is one pass over the data.

    For closed-set classification, where batches need no fixed number of images per class
    (a class-balanced batch of a 10-class set would hold at most ``10 × m`` items). Same
    ``(index, augmentation_seed)`` items and exact-resume interface as
    :class:`ClassBalancedBatchSampler`; the last incomplete batch is dropped.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0) -> None:
        if num_items < batch_size:
            raise ValueError(f"{num_items} training images cannot fill a batch of {batch_size}")
        self.num_items = num_items
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.start_batch = 0

    def __len__(self) -> int:
        return self.num_items // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        """Yield the batches of the current epoch from ``start_batch`` on."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.num_items)
        seeds = rng.integers(0, 2**31 - 1, size=self.num_items)
        for b in range(self.start_batch, len(self)):
            picks = slice(b * self.batch_size, (b + 1) * self.batch_size)
            yield [(int(i), int(s)) for i, s in zip(order[picks], seeds[picks], strict=True)]
        self.start_batch = 0
