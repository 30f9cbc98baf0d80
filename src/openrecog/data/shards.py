"""Streaming, sharded training data: webdataset tar shards written once, read as endless streams.

Millions of training images never have to be listed in memory or unpacked: :func:`write_shards`
packs the original image files into ``shard-NNNNNN.tar`` files plus an ``index.json``, and
:func:`build_shard_loader` streams them back as fixed-size batches of augmented views.

Reading resamples shards with replacement (:class:`webdataset.ResampledShards`), so the stream
has no end and no epochs: a run is measured in steps. Each sample is shown as ``views``
augmented views that always land in the same batch, which the margin losses need (several views
per class per batch); with instance-as-class shards that is the only source of positives.

Typical use::

    index = write_shards_from_source("data/train", "data/train-shards", progress=True)
    loader = build_shard_loader("data/train-shards", transform, batch_size=128, views=2)
    for images, labels in loader:  # endless; stop after the number of steps you want
        ...
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from openrecog.data.datasets import DatasetError, SkippedFile, csv_dataset, folder_dataset
from openrecog.data.images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    check_image,
    is_image_file,
    load_image,
)

INDEX_NAME = "index.json"
INDEX_FORMAT = "openrecog-shards"
INDEX_VERSION = 1
SHARD_PATTERN = "shard-%06d.tar"
# Enough to show what went wrong without making index.json huge for a very dirty source.
MAX_SKIPPED_EXAMPLES = 100
# Consecutive read failures after which the stream gives up: an endless resampled stream over
# shards that are all unreadable would otherwise spin forever without yielding a sample.
MAX_CONSECUTIVE_ERRORS = 1000

_IMAGE_KEYS = frozenset(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)

Transform = Callable[[Image.Image], torch.Tensor]


@dataclass
class ShardInfo:
    """One shard file of a shard set.

    Attributes:
        file: File name, relative to the shard set's folder.
        samples: Number of samples (images) in the file.
    """

    file: str
    samples: int


@dataclass
class ShardIndex:
    """The ``index.json`` of a shard set: what the shards hold and where they are.

    Attributes:
        root: Folder holding ``index.json`` and the shards.
        shards: The shard files with their sample counts.
        num_samples: Total number of samples over all shards.
        num_classes: Number of classes (class ids are ``0 .. num_classes - 1``).
        class_names: Name of each class id; None for instance-as-class shard sets, where
            every image is its own class and a list of millions of names would only bloat
            the index.
        instance_as_class: Whether every sample is its own class (id = sample number).
        num_skipped: Number of source files left out because they were unreadable.
        skipped: The skipped files with reasons: all of them right after
            :func:`write_shards`, the first :data:`MAX_SKIPPED_EXAMPLES` after :meth:`load`.
    """

    root: Path
    shards: list[ShardInfo]
    num_samples: int
    num_classes: int
    class_names: list[str] | None = None
    instance_as_class: bool = False
    num_skipped: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        """Paths of the shard files, as webdataset reads them."""
        return [str(self.root / shard.file) for shard in self.shards]

    def to_json(self) -> dict[str, Any]:
        """The JSON document stored as ``index.json``."""
        doc: dict[str, Any] = {
            "format": INDEX_FORMAT,
            "version": INDEX_VERSION,
            "num_samples": self.num_samples,
            "num_classes": self.num_classes,
            "instance_as_class": self.instance_as_class,
        }
        if self.class_names is not None:
            doc["class_names"] = self.class_names
        else:
            doc["class_names_omitted"] = (
                "instance_as_class: every image is its own class (id = sample number), "
                "so a name list would hold one entry per image"
            )
        doc["shards"] = [{"file": s.file, "samples": s.samples} for s in self.shards]
        doc["skipped"] = self.num_skipped
        doc["skipped_examples"] = [
            {"path": s.path, "reason": s.reason} for s in self.skipped[:MAX_SKIPPED_EXAMPLES]
        ]
        return doc

    def save(self) -> Path:
        """Write ``root/index.json`` atomically and return its path.

        The file appears complete or not at all (write to a temporary file, then rename), so a
        crash never leaves an index that points at a half-written shard set.
        """
        target = self.root / INDEX_NAME
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".index-", suffix=".json.tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.to_json(), handle, indent=1)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> ShardIndex:
        """Read and validate a shard set's index.

        Args:
            path: The shard folder or its ``index.json``.

        Returns:
            The validated index, with ``root`` set to the folder holding it.

        Raises:
            DatasetError: The folder or index is missing, the file is not a valid shard index
                (wrong format, version or contents), or shard files it lists are missing.
        """
        path = Path(path)
        index_path = path / INDEX_NAME if path.is_dir() else path
        if not path.exists():
            raise DatasetError(f"{path}: shard folder not found")
        if not index_path.is_file():
            raise DatasetError(
                f"{index_path}: no shard index found; write the shards first "
                "(openrecog.data.shards.write_shards)"
            )
        try:
            doc = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{index_path}: unreadable shard index ({exc})") from exc
        where = str(index_path)
        if not isinstance(doc, dict) or doc.get("format") != INDEX_FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise DatasetError(
                f"{where}: not a shard index (format {found!r}, expected {INDEX_FORMAT!r})"
            )
        if doc.get("version") != INDEX_VERSION:
            raise DatasetError(
                f"{where}: shard index version {doc.get('version')!r} is not supported "
                f"(expected {INDEX_VERSION}); rewrite the shards"
            )
        try:
            shards = [ShardInfo(str(s["file"]), int(s["samples"])) for s in doc["shards"]]
            num_samples = int(doc["num_samples"])
            num_classes = int(doc["num_classes"])
            instance = bool(doc.get("instance_as_class", False))
            names = doc.get("class_names")
            num_skipped = int(doc.get("skipped", 0))
            skipped = [
                SkippedFile(str(s["path"]), str(s["reason"]))
                for s in doc.get("skipped_examples", [])
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: malformed shard index ({exc!r})") from exc
        if not shards or num_samples < 1:
            raise DatasetError(f"{where}: the shard set holds no samples")
        if sum(s.samples for s in shards) != num_samples:
            raise DatasetError(
                f"{where}: shard sample counts add up to {sum(s.samples for s in shards)}, "
                f"not num_samples={num_samples}"
            )
        if names is not None and (not isinstance(names, list) or len(names) != num_classes):
            raise DatasetError(f"{where}: class_names does not list num_classes={num_classes}")
        if names is None and not instance:
            raise DatasetError(f"{where}: class_names missing (only instance_as_class omits it)")
        root = index_path.parent.resolve()
        missing = [s.file for s in shards if not (root / s.file).is_file()]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            shown = ", ".join(missing[:5]) + more
            raise DatasetError(f"{where}: {len(missing)} shard file(s) missing: {shown}")
        return cls(root, shards, num_samples, num_classes, names, instance, num_skipped, skipped)


# ----------------------------------------------------------------------------- writing
def write_shards(
    items: Iterable[tuple[str | os.PathLike, str]],
    out_dir: str | os.PathLike,
    *,
    max_count: int = 10000,
    max_size: int = 1 << 30,
    class_names: list[str] | None = None,
    instance_as_class: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> ShardIndex:
    """Pack labelled image files into webdataset tar shards plus an ``index.json``.

    Each sample is stored as its file's original bytes under its (lower-cased) extension
    (``jpg``, ``png``, ``webp`` …, never re-encoded, so no quality is lost and nothing is
    decoded at write time beyond a header check), with ``cls`` (the int class id) and ``label``
    (the label text). Files that are not images or whose header is unreadable are skipped and
    listed in the returned index's ``skipped``; a truncated image body that passes the header
    check is caught and skipped later, when the stream decodes it.

    Args:
        items: ``(path, label)`` pairs, e.g. :func:`labelled_image_files`; may be a generator
            over millions of files (it is consumed once, never listed).
        out_dir: Folder for ``shard-000000.tar`` … and ``index.json`` (created if missing).
        max_count: Most samples per shard.
        max_size: Most bytes per shard (approximate: a shard is closed once it exceeds it).
        class_names: Fixed class vocabulary (id = position). Without it, ids are assigned in
            first-seen order. Items whose label is not in it are skipped and reported.
        instance_as_class: Every sample is its own class, with id = sample number
            (``class_names`` is then not stored, see :class:`ShardIndex`).
        overwrite: Replace an existing shard set in ``out_dir`` (its shards and index).
        progress: Show a progress bar.

    Returns:
        The index written to ``out_dir/index.json``, with the full list of skipped files.

    Raises:
        ValueError: Invalid limits, or ``class_names`` together with ``instance_as_class``.
        DatasetError: ``out_dir`` already holds shards (and not ``overwrite``), or no item
            was usable.
    """
    if max_count < 1 or max_size < 1:
        raise ValueError(f"max_count ({max_count}) and max_size ({max_size}) must be >= 1")
    if instance_as_class and class_names is not None:
        raise ValueError("class_names and instance_as_class exclude each other")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob("shard-*.tar")) + [p for p in [out / INDEX_NAME] if p.exists()]
    if old and not overwrite:
        raise DatasetError(f"{out}: already holds a shard set; pass overwrite=True to replace it")
    # The index goes first so that an interrupted rewrite leaves no index, not a stale one.
    for path in sorted(old, key=lambda p: p.name != INDEX_NAME):
        path.unlink()

    class_ids: dict[str, int] = {name: i for i, name in enumerate(class_names or [])}
    fixed_classes = class_names is not None
    counts: dict[str, int] = {}
    skipped: list[SkippedFile] = []
    total = len(items) if hasattr(items, "__len__") else None  # type: ignore[arg-type]
    bar = tqdm(items, total=total, desc="shards", unit="img", disable=not progress)
    writer = wds.ShardWriter(
        str(out / SHARD_PATTERN), maxcount=max_count, maxsize=max_size, verbose=0
    )
    try:
        for path, label in bar:
            if fixed_classes and label not in class_ids:
                reason: str | None = f"label {label!r} is not in class_names"
            else:
                reason = _unusable_reason(path)
            if reason is None:
                try:
                    data = Path(path).read_bytes()
                except OSError as exc:
                    reason = f"unreadable ({exc})"
            if reason is not None:
                skipped.append(SkippedFile(str(path), reason))
                continue
            number = writer.total
            # First-seen ids go only to written samples, so no class ends up without images.
            cls = number if instance_as_class else class_ids.setdefault(label, len(class_ids))
            writer.write(
                {
                    "__key__": f"{number:09d}",
                    Path(path).suffix.lower().lstrip("."): data,
                    "cls": cls,
                    # Labels come from file names, which may hold undecodable bytes.
                    "label": label.encode("utf-8", errors="backslashreplace"),
                }
            )
            counts[Path(writer.fname).name] = writer.count
    finally:
        writer.close()
        bar.close()
    if not counts:
        # ShardWriter opens its first shard eagerly, so an all-skipped run leaves an empty one.
        for path in out.glob("shard-*.tar"):
            path.unlink()
        detail = f" ({len(skipped)} unusable files skipped)" if skipped else ""
        raise DatasetError(f"{out}: no usable images to write{detail}")
    num_samples = sum(counts.values())
    index = ShardIndex(
        root=out.resolve(),
        shards=[ShardInfo(name, n) for name, n in counts.items()],
        num_samples=num_samples,
        num_classes=num_samples if instance_as_class else len(class_ids),
        class_names=None if instance_as_class else list(class_ids),
        instance_as_class=instance_as_class,
        num_skipped=len(skipped),
        skipped=skipped,
    )
    index.save()
    return index


def _unusable_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a training image (the dataset loaders' own checks), or None."""
    if not is_image_file(path):
        return "not an image file extension"
    return check_image(path)


def shard_items(
    source: str | os.PathLike,
    split: str | None = None,
    layout: Literal["auto", "folder", "csv"] = "auto",
) -> tuple[list[tuple[Path, str]], list[str]]:
    """The ``(path, label)`` items and class names of a folder or ``labels.csv`` dataset.

    Class names come out sorted, exactly as :func:`folder_dataset` / :func:`csv_dataset`
    number them, so shards written with them use the same class ids as the in-memory datasets.

    Args:
        source: A class-per-folder root (see :func:`labelled_image_files`), a folder holding
            ``labels.csv``, or the csv file itself.
        split: With csv data, keep only rows of this ``split``.
        layout: ``auto`` picks csv when ``source`` is a csv file, holds ``labels.csv`` or a
            ``split`` is asked for, and folder otherwise.

    Returns:
        The items (files not yet checked; :func:`write_shards` does that) and class names.

    Raises:
        DatasetError: The source is missing, empty or malformed.
    """
    src = Path(source)
    if layout == "auto":
        is_csv = src.is_file() or (src / "labels.csv").is_file() or split is not None
        layout = "csv" if is_csv else "folder"
    if layout == "csv":
        dataset = csv_dataset(src, split=split, check=False)
    elif split is not None:
        raise DatasetError(f"{src}: a split ({split!r}) needs labels.csv data")
    else:
        dataset = folder_dataset(src, check=False)
    names = dataset.class_names
    return [(p, names[lab]) for p, lab in zip(dataset.paths, dataset.labels, strict=True)], names


def write_shards_from_source(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str | None = None,
    layout: Literal["auto", "folder", "csv"] = "auto",
    instance_as_class: bool = False,
    max_count: int = 10000,
    max_size: int = 1 << 30,
    overwrite: bool = False,
    progress: bool = False,
) -> ShardIndex:
    """Shard a folder or ``labels.csv`` dataset (what ``openrecog shards SRC OUT`` runs).

    Args:
        source: Dataset root or csv file (see :func:`shard_items`).
        out_dir: Output folder for the shards and ``index.json``.
        split: csv split to keep.
        layout: ``auto``, ``folder`` or ``csv`` (see :func:`shard_items`).
        instance_as_class: Every image its own class.
        max_count: Most samples per shard.
        max_size: Most bytes per shard.
        overwrite: Replace an existing shard set in ``out_dir``.
        progress: Show a progress bar.

    Returns:
        The written index (``skipped`` lists every file left out, with its reason).

    Raises:
        DatasetError: Bad source, no usable image, or ``out_dir`` already holds shards.
    """
    items, names = shard_items(source, split=split, layout=layout)
    return write_shards(
        items,
        out_dir,
        max_count=max_count,
        max_size=max_size,
        class_names=None if instance_as_class else names,
        instance_as_class=instance_as_class,
        overwrite=overwrite,
        progress=progress,
    )


# ----------------------------------------------------------------------------- reading
class _SkipAndWarn:
    """webdataset exception handler: warn about a bad sample or shard and carry on.

    Written instead of ``wds.warn_and_continue`` because that one sleeps 0.5 s per error
    (stalling a worker each time a resampled stream meets the same corrupt file again) and
    never gives up, so a stream over nothing but unreadable shards would hang training.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = MAX_CONSECUTIVE_ERRORS if limit is None else limit
        self.failures = 0

    def __call__(self, exn: BaseException) -> bool:
        self.failures += 1
        if self.failures >= self.limit:
            raise DatasetError(
                f"shard stream: {self.failures} consecutive unreadable samples or shards; "
                f"last: {exn!r}"
            ) from exn
        warnings.warn(f"skipping unreadable training data: {exn}", RuntimeWarning, stacklevel=2)
        return True

    def ok(self) -> None:
        """Record a good sample: only an unbroken run of failures counts against the limit."""
        self.failures = 0


def _mix(*values: int) -> int:
    """A well-mixed 63-bit seed from several ints (stable across processes, unlike hash())."""
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values])
    high, low = state.generate_state(2)
    return ((int(high) << 32) | int(low)) & 0x7FFFFFFFFFFFFFFF


def _worker_id() -> int:
    info = get_worker_info()
    return 0 if info is None else info.id


def _rank_worker_seed(rank: int) -> int:
    # ResampledShards calls this inside the DataLoader worker, where the worker id is known.
    return _mix(rank, _worker_id())


def _collate(samples: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    # wds.default_collation_fn would turn the int labels into a numpy array.
    images = torch.stack([image for image, _ in samples])
    labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return images, labels


class ShardStream(IterableDataset):
    """An endless, shuffled stream of augmented views from a shard set.

    The pipeline is built from webdataset stages: :class:`webdataset.ResampledShards` →
    ``tarfile_to_samples`` → ``shuffle`` → ``map`` (decode + ``views`` augmentations) →
    ``unbatched`` (one item per view) → optionally ``batched``.

    Shards are drawn with replacement, forever, from a seed that mixes ``seed``, ``rank``,
    the DataLoader worker id, ``start_step`` and how often this object has been iterated. So
    every rank and every worker reads its own endless stream and none of them ever runs out.
    That matters for distributed training: finite per-rank streams (``split_by_node``) hold
    different numbers of samples, one rank stops early, and the others block forever in
    their next collective (all-reduce). ``split_by_worker`` is deliberately absent too:
    resampling workers with distinct seeds already read different data, and splitting the
    shard list would make workers with fewer shards run dry first.

    Views: each sample is decoded once with the project's :func:`load_image` (same safety
    rules as everywhere else: EXIF, alpha, bomb guard) and transformed ``views`` times; the
    views follow each other in the stream with the same label, and with ``batch_size`` set a
    batch never splits them. The augmentation of a sample is seeded from the stream (like
    :class:`AugmentedDataset`), so without workers, or with the same number of workers, the
    same arguments give the same batches, and the caller's global RNG is left untouched.

    Resume: a resumed run passes its ``start_step`` and gets a fresh stream instead of
    replaying the samples it already saw. It does not continue the interrupted stream
    bit-for-bit: the shuffle buffer's contents at the interruption are not saved, and cannot
    be cheaply (up to ``shuffle_buffer`` raw images per worker).

    Corrupt data (an undecodable image, a broken tar member, a missing shard) is skipped with
    a ``RuntimeWarning``; after :data:`MAX_CONSECUTIVE_ERRORS` failures in a row the stream
    raises :class:`DatasetError` rather than spinning forever.

    Args:
        index: A :class:`ShardIndex`, a shard folder or its ``index.json``.
        transform: PIL image → tensor, e.g. :func:`build_train_transform`.
        views: Augmented views per sample (each a separate item with the same label).
        shuffle_buffer: Raw samples held for shuffling (memory: this many encoded images per
            worker); 0 or 1 turns shuffling off.
        seed: Base seed.
        rank: Distributed rank: ranks must get different streams.
        start_step: Training step the run starts at; a resumed run passes its step so that it
            does not replay the samples it saw before the interruption.
        batch_size: If set, yield ``(images (B, 3, H, W), labels (B,) int64)`` batches of
            exactly this many rows (a multiple of ``views``) instead of single views.

    Raises:
        ValueError: ``views`` < 1, negative ``shuffle_buffer``, or a ``batch_size`` that is
            not a positive multiple of ``views``.
        DatasetError: The index is missing or invalid.
    """

    def __init__(
        self,
        index: ShardIndex | str | os.PathLike,
        transform: Transform,
        *,
        views: int = 1,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        rank: int = 0,
        start_step: int = 0,
        batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if batch_size is not None and (batch_size < 1 or batch_size % views):
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of views ({views}) so "
                "that the views of a sample are never split across batches"
            )
        self.index = index if isinstance(index, ShardIndex) else ShardIndex.load(index)
        self.transform = transform
        self.views = views
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.rank = rank
        self.start_step = start_step
        self.batch_size = batch_size
        # Counts __iter__ calls, so that re-iterating (a persistent DataLoader worker is
        # re-iterated, not recreated) continues with new data instead of replaying the start.
        self._iterations = 0
        self._errors = _SkipAndWarn()

    @property
    def num_classes(self) -> int:
        """Number of classes of the shard set (size of the classifier head)."""
        return self.index.num_classes

    @property
    def class_names(self) -> list[str] | None:
        """Class names (None for instance-as-class shard sets)."""
        return self.index.class_names

    def __iter__(self) -> Iterator[Any]:
        """Yield ``(view, label)`` items, or batches if ``batch_size`` is set; never ends."""
        iteration = self._iterations
        self._iterations += 1
        # Built per iteration, in the worker, because the shuffle's RNG and the augmentation
        # seeds depend on the worker id, which only exists there.
        stream_seed = _mix(self.seed, self.start_step, iteration)
        worker_seed = _mix(stream_seed, self.rank, _worker_id())
        stages: list[Any] = [
            wds.ResampledShards(
                self.index.urls,
                seed=stream_seed,
                worker_seed=partial(_rank_worker_seed, self.rank),
                deterministic=True,
            ),
            wds.tarfile_to_samples(handler=self._errors),
        ]
        if self.shuffle_buffer > 1:
            stages.append(
                wds.shuffle(
                    self.shuffle_buffer,
                    initial=min(100, self.shuffle_buffer),
                    rng=random.Random(_mix(worker_seed, 1)),
                )
            )
        augment_seeds = random.Random(_mix(worker_seed, 2))
        stages += [
            wds.map(partial(self._decode, augment_seeds), handler=self._errors),
            wds.unbatched(),
        ]
        if self.batch_size is not None:
            stages.append(wds.batched(self.batch_size, collation_fn=_collate, partial=False))
        return iter(wds.DataPipeline(*stages))

    def _decode(
        self, augment_seeds: random.Random, sample: dict[str, Any]
    ) -> tuple[list[torch.Tensor], list[int]]:
        """One raw sample → its ``views`` augmented tensors and as many copies of its label.

        All views are made before any is yielded, so a failure drops the whole sample and the
        stream stays aligned to groups of ``views``.
        """
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        keys = sorted(k for k in sample if k in _IMAGE_KEYS)
        if not keys or "cls" not in sample:
            raise DatasetError(f"{where}: sample has no image or no cls ({sorted(sample)})")
        label = int(sample["cls"])
        try:
            image = load_image(sample[keys[0]])
        except ImageLoadError as exc:  # it names only "<image>"; add where the sample lives
            raise DatasetError(f"{where}: {exc}") from exc
        seed = augment_seeds.getrandbits(63)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                views = [self.transform(image) for _ in range(self.views)]
            finally:
                random.setstate(py_state)
        self._errors.ok()
        return views, [label] * self.views


def _single_thread_worker(_: int) -> None:
    # Data workers share the cores with the training step; intra-op threads in every worker
    # oversubscribe the CPU and slow both down (as in the trainer's own loader).
    torch.set_num_threads(1)


def build_shard_loader(
    index_or_dir: ShardIndex | str | os.PathLike,
    transform: Transform,
    batch_size: int,
    views: int = 2,
    shuffle_buffer: int = 1000,
    num_workers: int = 0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """An endless DataLoader of ``(images (B, 3, H, W) float, labels (B,) int64)`` batches.

    Every batch has exactly ``batch_size`` rows: ``batch_size // views`` samples, each as
    ``views`` consecutive augmented views with the same label. Batches are assembled inside
    the worker that read them (webdataset ``batched``), so no sample's views are split across
    batches or workers; each worker reads its own resampled stream (see :class:`ShardStream`).
    The loader's ``dataset`` is the :class:`ShardStream`, whose ``num_classes`` sizes the head.

    Args:
        index_or_dir: A :class:`ShardIndex`, shard folder or ``index.json``.
        transform: PIL image → tensor, e.g. :func:`build_train_transform`.
        batch_size: Rows per batch; a multiple of ``views``.
        views: Augmented views per sample.
        shuffle_buffer: Raw samples held for shuffling, per worker.
        num_workers: DataLoader worker processes (kept alive between iterations).
        seed: Base seed.
        rank: This process's distributed rank (its stream differs from every other rank's).
        world_size: Number of distributed ranks; only checked against ``rank``, since every
            rank streams endlessly from all shards rather than from a split of them.
        start_step: The step training starts at (pass the resumed step on resume).
        pin_memory: Pin batches for faster host-to-GPU copies.

    Returns:
        The DataLoader; iterate it for as many steps as needed, it never stops by itself.

    Raises:
        ValueError: ``batch_size`` is not a positive multiple of ``views``, or ``rank`` is not
            in ``[0, world_size)``.
        DatasetError: The index is missing or invalid.
    """
    if batch_size < 1 or views < 1 or batch_size % views:
        raise ValueError(
            f"batch_size ({batch_size}) must be a positive multiple of views ({views}) so "
            "that the views of a sample are never split across batches"
        )
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    stream = ShardStream(
        index_or_dir,
        transform,
        views=views,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
        rank=rank,
        start_step=start_step,
        batch_size=batch_size,
    )
    return DataLoader(
        stream,
        batch_size=None,  # the stream batches itself, keeping each sample's views together
        num_workers=num_workers,
        worker_init_fn=_single_thread_worker if num_workers > 0 else None,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )
