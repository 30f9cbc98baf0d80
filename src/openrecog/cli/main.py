"""The ``openrecog`` command line: thin typer wrappers over the library."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from enum import StrEnum
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from openrecog.config import ConfigError, ModelConfig

app = typer.Typer(
    help="Open-set visual recognition by metric learning: train, evaluate, register, recognize.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Errors a user can cause and fix; they get one line, never a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    PermissionError,
)


def fail(message: str, code: int = 2) -> None:
    """Print ``error: message`` to stderr, on one line, and exit."""
    # Some messages (a YAML parser's, with its caret diagram) span lines; the promise is one.
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    typer.echo(f"error: {one_line}", err=True)
    raise typer.Exit(code)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected errors into a one-line message and exit code 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except USER_ERRORS as exc:
            fail(str(exc) or type(exc).__name__)
        except KeyboardInterrupt:
            fail("interrupted", code=130)

    return wrapper


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


@app.command()
@user_errors
def train(
    config: Annotated[Path | None, typer.Argument(help="YAML experiment config")] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="dotted overrides, e.g. train.epochs=3")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the newest checkpoint")] = False,
) -> None:
    """Train an embedding model; writes runs/<name>/ with config, logs, checkpoints, best/."""
    from openrecog.config import load_config
    from openrecog.eval.table import format_table
    from openrecog.train.distributed import shutdown_distributed
    from openrecog.train.trainer import Trainer

    # The whole argument, not its last path part: data.root=/x/y is an override too.
    if config is not None and "=" in str(config) and not config.exists():
        overrides = [str(config), *(overrides or [])]
        config = None
    cfg = load_config(config, overrides or [])
    trainer = Trainer(cfg, resume=resume)
    try:
        result = trainer.fit()
    finally:
        shutdown_distributed(trainer.dist)
    if result.rank != 0:
        return
    typer.echo(f"run folder: {result.run_dir}  (best model: {result.run_dir / 'best'})")
    if result.final_metrics:
        columns = _CLASSIFY_COLUMNS if "top1" in result.final_metrics else _COLUMNS
        typer.echo(format_table([{"model": "final", **result.final_metrics}], columns=columns))


_COLUMNS = ["model", "p@1", "map@5", "mp@5", "recall@5", "tpr@fpr=1e-03", "tpr@fpr=1e-04", "auroc"]
_CLASSIFY_COLUMNS = ["model", "top1", "loss", "images"]  # loss.name=ce runs


def _dataset_from_path(data: Path, split: str):
    from openrecog.data.datasets import csv_dataset, folder_dataset

    if (data / "labels.csv").is_file() or data.suffix == ".csv":
        return csv_dataset(data, split=split or None)
    return folder_dataset(data)


@app.command("eval")
@user_errors
def evaluate(
    model: Annotated[str, typer.Argument(help="model artifact folder or model name")],
    data: Annotated[Path, typer.Option(help="folder with labels.csv, or class-per-folder")],
    split: Annotated[str, typer.Option(help="labels.csv split to use ('' for all)")] = "test",
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    target_far: Annotated[float, typer.Option(help="false-accept rate for the threshold")] = 1e-3,
    output: Annotated[Path | None, typer.Option("--json", help="write metrics JSON here")] = None,
    report: Annotated[
        Path | None, typer.Option(help="write report.html and PNG figures into this folder")
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            help="training run folder whose log.jsonl curves go into the report "
            "(default: the run of a best/ or last/ model folder)"
        ),
    ] = None,
) -> None:
    """Evaluate a model leave-one-out on class-disjoint labelled images."""
    from openrecog.eval.evaluate import embed_and_evaluate
    from openrecog.eval.table import format_table, metrics_to_json
    from openrecog.models import load_model

    if run is not None:
        if report is None:
            raise ValueError("--run only matters with --report")
        if not (run / "log.jsonl").is_file() and not (run.is_file() and run.suffix == ".jsonl"):
            raise FileNotFoundError(f"no training log: {run / 'log.jsonl'} does not exist")
    elif report is not None:
        # A trained model is saved as runs/<name>/best or last, next to the run's log.
        folder = Path(model)
        if folder.name in ("best", "last") and (folder.parent / "log.jsonl").is_file():
            run = folder.parent
    embedder = load_model(model)
    dataset = _dataset_from_path(data, split)
    if dataset.skipped:
        typer.echo(f"skipped {len(dataset.skipped)} unreadable files", err=True)
    # Embedded once: the report plots the very embeddings the metrics come from.
    embeddings, labels, metrics = embed_and_evaluate(
        embedder, dataset, batch_size=batch_size, target_far=target_far, progress=True
    )
    typer.echo(format_table([{"model": model, **metrics}], columns=_COLUMNS + ["threshold"]))
    if output:
        metrics_to_json(metrics, output)
        typer.echo(f"metrics written to {output}")
    if report is not None:
        from openrecog.eval.report import write_report

        info: dict[str, Any] = {"split": split or "all", "target FAR": target_far}
        backbone = getattr(getattr(embedder, "config", None), "backbone", None)
        if backbone:
            info["backbone"] = backbone
        if dataset.skipped:
            info["unreadable files skipped"] = len(dataset.skipped)
        # Datasets store class indices; readers of the report know the classes by name.
        names = getattr(dataset, "class_names", None)
        path = write_report(
            report,
            embeddings=embeddings,
            labels=[names[i] for i in labels] if names else labels,
            metrics=metrics,
            title=f"openrecog evaluation: {model} on {data.name}",
            model_name=model,
            data_name=f"{data} (split {split})" if split else str(data),
            run_dir=run,
            info=info,
        )
        typer.echo(f"report written to {path}")


def _open_gallery(
    path: Path,
    model: str | None,
    threshold: float | None,
    index: str | None = None,
    **encoder_options: Any,
):
    from openrecog.gallery import Gallery
    from openrecog.gallery.gallery import gallery_exists
    from openrecog.models import load_model

    if gallery_exists(path):
        gallery = Gallery.load(path, index=index, **encoder_options)
        if threshold is not None:
            gallery.threshold = threshold
        return gallery
    if path.exists() and any(path.iterdir()):
        fail(f"{path} exists and is not a gallery; choose an empty or new folder")
    if model is None:
        fail(f"{path} is not a gallery yet; create it by passing --model (e.g. --model default)")
    return Gallery(load_model(model), threshold=threshold, index=index or "Flat", **encoder_options)


@app.command()
@user_errors
def register(
    gallery: Annotated[Path, typer.Argument(help="gallery folder (created if new)")],
    sources: Annotated[list[Path], typer.Argument(help="folders (<class>/<img>) or image files")],
    model: Annotated[str | None, typer.Option(help="model for a new gallery")] = None,
    label: Annotated[str | None, typer.Option(help="label for image files (default: stem)")] = None,
    threshold: Annotated[float | None, typer.Option(help="unknown threshold (cosine)")] = None,
    index: Annotated[
        str | None,
        typer.Option(
            help="index of a new gallery: Flat (default), HNSW32, IVF1024,PQ32, auto, or "
            "pgvector+postgresql://...?table=NAME (shared); for an existing one, rebuild "
            "with this FAISS spec or reach its database by this DSN"
        ),
    ] = None,
) -> None:
    """Register images into a gallery and save it atomically."""
    g = _open_gallery(gallery, model, threshold, index)
    added = skipped = 0
    for source in sources:
        if source.is_dir():
            report = g.register_folder(source, progress=True)
        elif source.exists():
            report = g.register_many([source], [label or source.stem])
        else:
            fail(f"{source}: no such file or folder")
        added += len(report.added)
        skipped += len(report.skipped)
        for item in report.skipped:
            typer.echo(f"skipped {item.path}: {item.reason}", err=True)
    g.save(gallery)
    typer.echo(
        f"registered {added} images ({skipped} skipped); gallery now has "
        f"{len(g)} items in {len(g.classes())} classes -> {gallery}"
    )


@app.command()
@user_errors
def classify(
    gallery: Annotated[Path, typer.Argument(help="gallery folder")],
    images: Annotated[list[Path], typer.Argument(help="images to recognise")],
    threshold: Annotated[float | None, typer.Option(help="override the gallery threshold")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Recognise each image as a registered class or 'unknown'."""
    from openrecog.data.images import ImageLoadError
    from openrecog.gallery import Gallery

    g = Gallery.load(gallery)
    if threshold is not None:
        g.threshold = threshold
    results, failed = [], 0
    for image in images:
        try:
            label, score = g.classify(image)
            results.append({"image": str(image), "label": label, "score": round(score, 4)})
        except ImageLoadError as exc:
            failed += 1
            results.append({"image": str(image), "error": str(exc)})
    if as_json:
        _echo_json(results)
    else:
        for r in results:
            line = r.get("error") or f"{r['label']}\t{r['score']:.4f}"
            typer.echo(f"{r['image']}\t{line}")
    if failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def search(
    gallery: Annotated[Path, typer.Argument(help="gallery folder")],
    image: Annotated[Path | None, typer.Argument(help="query image")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="number of results")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    text: Annotated[
        str | None, typer.Option(help="search by this caption instead of an image")
    ] = None,
    text_model: Annotated[
        Path | None, typer.Option(help="cross-modal model folder (openrecog crossmodal train)")
    ] = None,
) -> None:
    """Show the k registered items most similar to an image, or fitting a --text caption."""
    from openrecog.gallery import Gallery

    if (image is None) == (text is None):
        fail("give a query image or --text, not both")
    g = Gallery.load(gallery)
    if text is not None:
        if text_model is None:
            fail("--text needs --text-model (the folder of a cross-modal model)")
        from openrecog.models.crossmodal import load_text_encoder

        g.attach_text_encoder(load_text_encoder(text_model))
        hits = g.search_text(text, k=k)
    else:
        hits = g.search(image, k=k)
    if as_json:
        _echo_json([h.__dict__ for h in hits])
        return
    for rank, hit in enumerate(hits, 1):
        typer.echo(f"{rank}\t{hit.score:.4f}\t{hit.label}\t(item {hit.item_id})")


@app.command()
@user_errors
def remove(
    gallery: Annotated[Path, typer.Argument(help="gallery folder")],
    item_id: Annotated[int | None, typer.Option("--id", help="item id to remove")] = None,
    label: Annotated[str | None, typer.Option(help="remove every item of this class")] = None,
) -> None:
    """Remove an item or a whole class from a gallery."""
    from openrecog.gallery import Gallery

    if (item_id is None) == (label is None):
        fail("give exactly one of --id or --label")
    g = Gallery.load(gallery)
    removed = 1 if item_id is not None else 0
    if item_id is not None:
        g.remove(item_id)
    else:
        removed = g.remove_class(label)
    g.save(gallery)
    typer.echo(f"removed {removed} item(s); {len(g)} remain")


@app.command()
@user_errors
def info(gallery: Annotated[Path, typer.Argument(help="gallery folder")]) -> None:
    """Print a gallery's size, classes, threshold and model."""
    from openrecog.gallery import Gallery

    g = Gallery.load(gallery)
    _echo_json({**g.info(), "class_counts": g.classes()})


@app.command()
@user_errors
def serve(
    gallery: Annotated[Path, typer.Argument(help="gallery folder (created if new, with --model)")],
    host: Annotated[
        str, typer.Option(help="interface to bind; a non-loopback one needs an API key")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535)] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="OPENRECOG_API_KEY",
            show_default=False,
            help="key clients send in X-API-Key (prefer the OPENRECOG_API_KEY variable: "
            "arguments are visible to other users); without one, writes are disabled",
        ),
    ] = None,
    protect_reads: Annotated[
        bool, typer.Option(help="require the key to classify, search and list too")
    ] = False,
    allow_unauthenticated_writes: Annotated[
        bool, typer.Option(help="without an API key, let anyone write (loopback only)")
    ] = False,
    max_upload_mb: Annotated[float, typer.Option(min=0.001, help="largest image, in MB")] = 10.0,
    max_batch: Annotated[int, typer.Option(min=1, max=1024, help="images per request")] = 32,
    timeout: Annotated[
        float, typer.Option(min=0.0, help="seconds before a request answers 503 (0: none)")
    ] = 30.0,
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="allow browser calls from this origin (repeat)")
    ] = None,
    save: Annotated[
        bool, typer.Option("--save/--no-save", help="save the gallery after each write")
    ] = True,
    model: Annotated[str | None, typer.Option(help="model for a new gallery")] = None,
    index: Annotated[
        str | None,
        typer.Option(help="index of a new gallery, or rebuild/reach an existing one"),
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(help="classify with this threshold (not saved)")
    ] = None,
    text_model: Annotated[
        Path | None,
        typer.Option(help="cross-modal model folder: enables POST /search/text"),
    ] = None,
    threads: Annotated[
        int,
        typer.Option(
            min=1,
            help="onnxruntime threads per request (concurrent requests are the parallelism; "
            "raise it for one client at a time)",
        ),
    ] = 1,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="log every request")
    ] = True,
) -> None:
    """Serve a gallery over HTTP: classify, search, register, with a web page at /."""
    from openrecog.serve import ServeSettings, create_app, is_loopback_host

    if not api_key and not is_loopback_host(host):
        fail(
            f"refusing to listen on {host} without an API key: anyone who can reach it could "
            "change the gallery; set OPENRECOG_API_KEY (or --api-key), or bind to 127.0.0.1"
        )
    settings = ServeSettings(
        host=host,
        port=port,
        api_key=api_key,
        protect_reads=protect_reads,
        allow_unauthenticated_writes=allow_unauthenticated_writes,
        max_upload_bytes=max(1, int(max_upload_mb * 1024 * 1024)),
        max_batch=max_batch,
        request_timeout_s=timeout or None,
        cors_origins=list(cors_origin or []),
        save_on_write=save,
        threshold=threshold,
    )
    from openrecog.gallery.gallery import gallery_exists

    is_new = not gallery_exists(gallery)
    # Requests run concurrently in the threadpool, each on `threads` onnxruntime threads that
    # do not spin-wait: see docs/benchmarks/serving.md for the measured alternatives.
    g = _open_gallery(
        gallery, model, threshold if is_new else None, index, threads=threads, spinning=False
    )
    if is_new and save:
        g.save(gallery)  # so that the folder is a gallery from the start
    if text_model is not None:
        from openrecog.models.crossmodal import load_text_encoder

        g.attach_text_encoder(load_text_encoder(text_model))
    if g.encoder.onnx_engine is not None:
        import torch

        # torch then only preprocesses one image per request, and concurrent requests are
        # the parallelism: its intra-op threads would fight onnxruntime's for the cores
        # (measured on 2 cores under load: a 224 px resize 2.3 ms on 1 thread, 32 ms on 2).
        torch.set_num_threads(1)
    web = create_app(g, gallery, settings)

    import uvicorn

    writes = (
        "need X-API-Key"
        if settings.api_key
        else "open to anyone"
        if allow_unauthenticated_writes
        else "disabled (no API key)"
    )
    typer.echo(
        f"serving {gallery} ({len(g)} items, {len(g.classes())} classes, model on "
        f"{g.encoder.engine_name}) on http://{host}:{port}/ (API docs at /docs); "
        f"writes {writes}",
        err=True,
    )
    # One worker: the gallery lives in this process's memory.
    uvicorn.run(
        web, host=host, port=port, log_level="info", server_header=False, access_log=access_log
    )


@app.command()
def models(
    max_params: Annotated[
        float | None,
        typer.Option(
            "--max-params",
            min=1,
            help="list only the registered configs with at most this many parameters "
            "(e.g. 5e6), with their sizes",
        ),
    ] = None,
) -> None:
    """List shipped models and registered model configurations."""
    from openrecog.models import create_model, list_models, list_shipped_models
    from openrecog.models.budget import count_parameters

    if max_params is None:
        shipped = list_shipped_models()
        typer.echo("shipped (trained): " + (", ".join(shipped) if shipped else "none"))
        for entry in list_models():
            typer.echo(f"  {entry.name:<24} {entry.description}")
        return
    fits = 0
    for entry in list_models():
        # Built untrained: only the architecture (backbone + neck) decides the size.
        params = count_parameters(create_model(entry.config, pretrained=False))
        if params <= max_params:
            fits += 1
            typer.echo(f"  {entry.name:<24} {params / 1e6:6.2f}M  {entry.description}")
    typer.echo(f"{fits} registered configs within {max_params:,.0f} parameters")


class WeightsDtype(StrEnum):
    """How ``export`` stores the weights (mirrors ``openrecog.models.compression``)."""

    float32 = "float32"
    float16 = "float16"
    int8 = "int8"


# Test-time augmentation modes, taken from the config schema so the two cannot drift apart.
TtaMode = StrEnum("TtaMode", {m: m for m in get_args(ModelConfig.model_fields["tta"].annotation)})


# Options shared by the commands that write a model artifact (and fit a PCA on images).
FitConfigOption = Annotated[
    Path | None, typer.Option(help="fit on the training data of this experiment config")
]
FitDataOption = Annotated[Path | None, typer.Option(help="or: fit on the images in this folder")]
MaxImagesOption = Annotated[int, typer.Option(min=1, help="fit on at most this many")]
WeightsOption = Annotated[WeightsDtype, typer.Option(help="stored weights")]
ForceOption = Annotated[bool, typer.Option("--force", help="replace an existing artifact")]
OnnxOption = Annotated[
    bool,
    typer.Option(
        "--onnx", help="also write model.onnx (used by default for inference, via onnxruntime)"
    ),
]
Int8OnnxOption = Annotated[
    bool, typer.Option("--int8-onnx", help="also write model.int8.onnx (implies --onnx)")
]


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _check_model_output(output: Path, force: bool) -> None:
    """Refuse to write a model over anything but (with ``force``) a model or an empty folder."""
    from openrecog.models.artifact import is_artifact

    if output.exists() or output.is_symlink():
        if not force:
            raise FileExistsError(f"{output} already exists; pass --force to replace it")
        empty_dir = output.is_dir() and not any(output.iterdir())
        if not (is_artifact(output) or empty_dir):
            raise FileExistsError(
                f"{output} exists and is not a model artifact; refusing to replace it"
            )


@app.command()
@user_errors
def export(
    model: Annotated[
        str, typer.Argument(help="model artifact folder, shipped model or registered config")
    ],
    output: Annotated[Path, typer.Argument(help="artifact folder to write")],
    weights: Annotated[
        WeightsDtype,
        typer.Option(help="stored weights: float32 (lossless), float16, int8 (weight-only)"),
    ] = WeightsDtype.float32,
    tta: Annotated[
        TtaMode | None,
        typer.Option(help="test-time augmentation of the exported model (default: keep)"),
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(
            help="input size of the exported model (gap neck only; default: keep)", min=32
        ),
    ] = None,
    force: ForceOption = False,
    onnx: OnnxOption = False,
    int8_onnx: Int8OnnxOption = False,
) -> None:
    """Re-save a model with compact weights and report its size and fidelity to float32.

    With --onnx the artifact also holds model.onnx, checked against PyTorch (refused below
    cosine 0.9999) and recorded with its SHA-256 in config.json.
    """
    from openrecog.models import load_model, save_artifact
    from openrecog.models.compression import embedding_min_cosine

    _check_model_output(output, force)
    embedder = load_model(model)
    if tta is not None:
        embedder.set_tta(tta.value)
    if image_size is not None:
        if not hasattr(embedder, "set_image_size"):
            raise ValueError("--image-size: an ensemble's members keep their own sizes")
        embedder.set_image_size(image_size)
    metadata = {
        **(getattr(embedder, "artifact_metadata", None) or {}),
        "exported_from": model,
        "weights_dtype": weights.value,
    }
    save_artifact(embedder, output, metadata=metadata, weights_dtype=weights.value)
    reloaded = load_model(output)
    cosine = embedding_min_cosine(embedder, reloaded, embedder.config.image_size)
    typer.echo(
        f"exported {model} -> {output} (weights {weights.value}): {_dir_size(output) / 1e6:.2f} MB"
    )
    typer.echo(f"min cosine vs float32 on 8 random images: {cosine:.5f}")
    _add_onnx(output, onnx, int8_onnx, reloaded)


def _add_onnx(output: Path, onnx: bool, int8_onnx: bool, model: Any = None) -> None:
    """Export the artifact at ``output`` to ONNX in place when asked, and print the parity."""
    if not (onnx or int8_onnx):
        return
    from openrecog.models.onnx_export import add_onnx_to_artifact

    try:
        added = add_onnx_to_artifact(output, int8=int8_onnx, model=model)
    except ValueError as exc:
        raise ValueError(f"{exc} ({output} was written without ONNX)") from exc
    fp32 = added.fp32
    typer.echo(
        f"onnx: {fp32.path.name} ({fp32.bytes / 1e6:.2f} MB, opset {fp32.opset}, "
        f"{fp32.int8_weights} weights stored as int8): {fp32.parity.summary()}"
    )
    if added.int8 is not None:
        ops = ", ".join(f"{n} {op}" for op, n in added.int8.quantized_ops.items()) or "none"
        typer.echo(
            f"onnx int8: {added.int8.path.name} ({added.int8.bytes / 1e6:.2f} MB, "
            f"quantised: {ops}): {added.int8.parity.summary()}"
        )


def _check_fit_source(config: Path | None, data: Path | None) -> None:
    """Require exactly one source of fitting images."""
    if (config is None) == (data is None):
        raise ValueError("give exactly one of --config (its training data) or --data FOLDER")


def _fitting_dataset(config: Path | None, data: Path | None, image_size: int, max_images: int):
    """Images to fit a PCA on: an experiment config's training data or a folder of images."""
    from torch.utils.data import Subset

    from openrecog.config import load_config
    from openrecog.data.factory import build_train_dataset, instance_folder

    if config is not None:
        dataset = build_train_dataset(load_config(config).data, image_size)
    else:
        dataset = instance_folder(str(data))
    if len(dataset) > max_images:
        # An even spread over the dataset, so mixed sources keep their proportions.
        step = len(dataset) / max_images
        dataset = Subset(dataset, [int(i * step) for i in range(max_images)])
    return dataset


@app.command()
@user_errors
def pca(
    model: Annotated[str, typer.Argument(help="model artifact folder or shipped model")],
    output: Annotated[Path, typer.Argument(help="artifact folder to write")],
    dim: Annotated[int, typer.Option(min=2, help="target embedding size")] = 64,
    config: FitConfigOption = None,
    data: FitDataOption = None,
    max_images: MaxImagesOption = 5000,
    weights: WeightsOption = WeightsDtype.float32,
    force: ForceOption = False,
    onnx: OnnxOption = False,
    int8_onnx: Int8OnnxOption = False,
) -> None:
    """Reduce a model's embedding to --dim by PCA fitted on training images (GUIE-style)."""
    from openrecog.models import EnsembleEmbedder, load_model, save_artifact
    from openrecog.models.pca import fit_pca_model

    _check_fit_source(config, data)
    _check_model_output(output, force)
    embedder = load_model(model)
    if isinstance(embedder, EnsembleEmbedder):
        raise ValueError(
            f"{model} is an ensemble; its PCA is fitted by `openrecog ensemble ... --pca-dim N`"
        )
    dataset = _fitting_dataset(config, data, embedder.config.image_size, max_images)
    reduced, stats = fit_pca_model(embedder, dataset, dim, progress=True)
    metadata = {
        **(getattr(embedder, "artifact_metadata", None) or {}),
        "pca_from": model,
        "pca_fit": {**stats, "source": str(config or data)},
    }
    save_artifact(reduced, output, metadata=metadata, weights_dtype=weights.value)
    typer.echo(
        f"{model} -> {output}: {embedder.embedding_dim}-d -> {dim}-d, explained variance "
        f"{stats['explained_variance']:.3f} on {int(stats['fit_images'])} images"
    )
    _add_onnx(output, onnx, int8_onnx)


@app.command()
@user_errors
def ensemble(
    models: Annotated[
        list[str], typer.Argument(help="two or more model artifact folders or shipped models")
    ],
    output: Annotated[Path, typer.Option("--out", help="artifact folder to write")],
    pca_dim: Annotated[
        int | None, typer.Option(min=2, help="reduce the concatenation to this size by PCA")
    ] = None,
    config: FitConfigOption = None,
    data: FitDataOption = None,
    max_images: MaxImagesOption = 5000,
    weights: WeightsOption = WeightsDtype.float32,
    force: ForceOption = False,
) -> None:
    """Concatenate several models' embeddings, optionally PCA-reduced (GUIE-style ensemble).

    The ensemble takes the first model's input (size, mean, std) and converts it for the
    others. With --pca-dim the PCA is fitted on --config's training data or --data's images.
    """
    from openrecog.models import fit_ensemble, load_model, save_artifact

    if len(models) < 2:
        raise ValueError(f"an ensemble needs at least 2 models (got {len(models)})")
    if pca_dim is None and (config is not None or data is not None):
        raise ValueError("--config/--data choose the PCA's fitting images; add --pca-dim N")
    if pca_dim is not None:
        _check_fit_source(config, data)
    _check_model_output(output, force)
    members = [load_model(name) for name in models]
    dataset = None
    if pca_dim is not None:
        dataset = _fitting_dataset(config, data, members[0].config.image_size, max_images)
    combined, stats = fit_ensemble(members, dataset, pca_dim, progress=True)
    metadata: dict[str, Any] = {"ensemble_of": list(models)}
    if pca_dim is not None:
        metadata["pca_fit"] = {**stats, "source": str(config or data)}
    save_artifact(combined, output, metadata=metadata, weights_dtype=weights.value)
    summary = f"{' + '.join(models)} -> {output}: {stats['concat_dim']}-d"
    if pca_dim is not None:
        summary += (
            f" -> {pca_dim}-d, explained variance {stats['explained_variance']:.3f} "
            f"on {int(stats['fit_images'])} images"
        )
    typer.echo(summary)


crossmodal_app = typer.Typer(help="Image-text retrieval: train a two-tower model (ALBEF ITC).")
app.add_typer(crossmodal_app, name="crossmodal")


@crossmodal_app.command("train")
@user_errors
def crossmodal_train(
    config: Annotated[Path | None, typer.Argument(help="YAML config (flat keys)")] = None,
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. steps=300")
    ] = None,
) -> None:
    """Train image and text towers on a captions.csv folder; print held-out R@1/5/10."""
    from openrecog.eval.table import format_table
    from openrecog.train.crossmodal import CrossModalTrainer, load_crossmodal_config

    cfg = load_crossmodal_config(config, overrides or [])
    result = CrossModalTrainer(cfg).fit()
    typer.echo(f"model written to {result.model_dir} (image side: {result.model_dir}/image)")
    if result.metrics:
        rows = [{"model": "untrained projections", **result.floor_metrics}]
        rows.append({"model": "trained", **result.metrics})
        keys = ["model"] + [k for k in result.metrics if k.startswith(("t2i", "i2t"))]
        typer.echo(format_table(rows, columns=keys))


@crossmodal_app.command("describe")
@user_errors
def crossmodal_describe(
    images: Annotated[list[Path], typer.Argument(help="images to find captions for")],
    captions: Annotated[
        Path, typer.Option(help="candidate captions: a captions.csv (text column) or one per line")
    ],
    text_model: Annotated[Path, typer.Option(help="cross-modal model folder")],
    k: Annotated[int, typer.Option("-k", min=1, help="captions per image")] = 3,
) -> None:
    """Image→text: the captions of a set that best describe each image."""
    import csv

    from openrecog.models.crossmodal import load_image_side, load_text_encoder, rank_captions
    from openrecog.models.encoder import ImageEncoder

    if not captions.is_file():
        raise FileNotFoundError(f"{captions} not found")
    if captions.suffix == ".csv":
        with open(captions, newline="", encoding="utf-8") as handle:
            texts = [row["text"] for row in csv.DictReader(handle) if row.get("text")]
    else:
        texts = [line.strip() for line in captions.read_text("utf-8").splitlines()]
    texts = list(dict.fromkeys(t for t in texts if t))
    vectors = ImageEncoder(load_image_side(text_model)).encode(images)
    ranked = rank_captions(vectors, texts, load_text_encoder(text_model), k=k)
    for image, best in zip(images, ranked, strict=True):
        typer.echo(str(image))
        for rank, (text, score) in enumerate(best, 1):
            typer.echo(f"  {rank}\t{score:.4f}\t{text}")


db_app = typer.Typer(help="A local PostgreSQL with pgvector for shared galleries.")
app.add_typer(db_app, name="db")


@db_app.command("start")
@user_errors
def db_start(
    data_dir: Annotated[Path, typer.Argument(help="PostgreSQL data folder (created if new)")],
    table: Annotated[str, typer.Option(help="table the printed gallery spec names")] = (
        "openrecog_items"
    ),
) -> None:
    """Start (or reuse) a local PostgreSQL + pgvector server and print its gallery spec."""
    from openrecog.index.pgserver import start_local_postgres
    from openrecog.index.pgvector import pgvector_spec

    try:
        uri = start_local_postgres(data_dir, keep_running=True)
    except RuntimeError as exc:
        fail(str(exc))
    typer.echo(pgvector_spec(uri, table))


@db_app.command("stop")
@user_errors
def db_stop(
    data_dir: Annotated[Path, typer.Argument(help="the data folder given to `db start`")],
) -> None:
    """Stop the local PostgreSQL server of DATA_DIR."""
    from openrecog.index.pgserver import stop_local_postgres

    try:
        stop_local_postgres(data_dir)
    except RuntimeError as exc:
        fail(str(exc))
    typer.echo(f"stopped the PostgreSQL server of {data_dir}")


@app.command()
@user_errors
def shards(
    source: Annotated[Path, typer.Argument(help="class-per-folder root or folder with labels.csv")],
    output: Annotated[Path, typer.Argument(help="folder for shard-*.tar and index.json")],
    split: Annotated[str, typer.Option(help="labels.csv split to pack ('' for all)")] = "",
    instance_as_class: Annotated[
        bool, typer.Option(help="every image its own class (DocClassifier-style)")
    ] = False,
    max_count: Annotated[int, typer.Option(min=1, help="images per shard")] = 10_000,
    overwrite: Annotated[bool, typer.Option(help="replace shards already in OUTPUT")] = False,
) -> None:
    """Pack images into webdataset tar shards for streaming training (data.source=shards)."""
    from openrecog.data.shards import write_shards_from_source

    index = write_shards_from_source(
        source,
        output,
        split=split or None,
        instance_as_class=instance_as_class,
        max_count=max_count,
        overwrite=overwrite,
        progress=True,
    )
    for skipped in index.skipped:
        typer.echo(f"skipped {skipped.path}: {skipped.reason}", err=True)
    typer.echo(
        f"{index.num_samples} images of {index.num_classes} classes in {len(index.shards)} "
        f"shards ({index.num_skipped} skipped) → {output}; train with data.source=shards "
        f"data.root={output}"
    )


@app.command()
@user_errors
def demo(
    output: Annotated[Path, typer.Option(help="working folder")] = Path("demo_out"),
    steps: Annotated[int, typer.Option(min=1, help="fine-tuning steps")] = 200,
    shared_data: Annotated[Path, typer.Option(help="folder with real benchmark sets")] = Path(
        "../shared/data"
    ),
) -> None:
    """End to end: synthetic data → fine-tune → evaluate → register → recognise."""
    from openrecog.demo import run_demo

    run_demo(output, steps=steps, shared_data=shared_data)


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
