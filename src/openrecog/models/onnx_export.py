"""Export an embedder to ONNX, with a parity check against PyTorch, and optional int8.

The graph takes the preprocessed float32 batch ``(B, 3, H, W)`` that
:meth:`~openrecog.models.embedder.Embedder.forward` takes (``B`` dynamic, ``H = W`` the
model's image size) and returns its L2-normalised embeddings ``(B, D)``; test-time
augmentation, when the model has it, runs inside the graph.

Why the ``torch.export`` ("dynamo") exporter and opset 18, measured with torch 2.14:

* the legacy TorchScript exporter is deprecated and traces timm's TF-"same" padding as
  run-time shape arithmetic: the EfficientNet-Lite0 graph gets ~560 extra nodes
  (Shape/Gather/Ceil/Pad/...), where the dynamo exporter, which specialises H and W, folds
  the padding into the convolutions and BatchNorm into their weights (49 Conv, 34 Clip,
  nothing else of note);
* opset 18 is the dynamo exporter's own: an older opset goes through the ONNX version
  converter, which cannot express the antialiased ``Resize`` of the TTA crops.

Weights that the artifact stores as int8 stay int8 in the ONNX file
(:func:`store_int8_weights`, exact), so the shipped model's ``model.onnx`` takes 4 MB.

The price is export time (about 15 s on two CPU cores, mostly symbolic-shape tracing for
the dynamic batch), paid once per artifact.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import tempfile
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openrecog.models.artifact import (
    CONFIG_FILE,
    ArtifactError,
    load_artifact,
    loaded_weights_sha256,
)
from openrecog.models.compression import INT8_MIN_NUMEL, INT8_QMAX
from openrecog.models.embedder import resolve_preprocessing
from openrecog.models.onnx_engine import (
    CPU_PROVIDER,
    ONNX_FILE,
    ONNX_INT8_FILE,
    ONNX_SECTION,
    create_session,
)
from openrecog.storage import read_json, sha256_file

DEFAULT_OPSET = 18
MIN_PARITY_COSINE = 0.9999
"""An export whose outputs fall below this cosine with PyTorch's is refused."""

PARITY_BATCH_SIZES: tuple[int, ...] = (1, 2, 5)
INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
INT8_OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm")
"""Operators :func:`quantize_int8` quantises by default (see there why not Conv)."""

_METADATA_PREFIX = "openrecog."


@dataclass(frozen=True)
class ParityReport:
    """How closely one model's embeddings follow a reference's on the same inputs.

    Attributes:
        reference: what was compared against (``"pytorch"`` or ``"onnx-fp32"``).
        max_abs_diff: largest absolute difference of any embedding component.
        min_cosine: smallest cosine between corresponding embeddings.
        images: how many images were compared (half standard-normal noise, half smooth
            natural-looking images normalised like real inputs).
        batch_sizes: the batch sizes they were run at.
    """

    reference: str
    max_abs_diff: float
    min_cosine: float
    images: int
    batch_sizes: list[int]

    def summary(self) -> str:
        """One line: ``min cosine ... , max abs diff ... vs ... on N images (batch ...)``."""
        batches = ", ".join(map(str, self.batch_sizes))
        return (
            f"min cosine {self.min_cosine:.6f}, max abs diff {self.max_abs_diff:.2e} vs "
            f"{self.reference} on {self.images} images (batch {batches})"
        )


@dataclass(frozen=True)
class OnnxExportReport:
    """What :func:`export_onnx` wrote and how faithful it is.

    Attributes:
        path: the ONNX file.
        sha256: its checksum.
        bytes: its size.
        opset: the default-domain opset of the graph.
        exporter: the exporter and library versions.
        parity: the comparison with the PyTorch model.
        int8_weights: how many weight tensors the file stores as int8 (see
            :func:`store_int8_weights`); the graph computes in float32 either way.
    """

    path: Path
    sha256: str
    bytes: int
    opset: int
    exporter: str
    parity: ParityReport
    int8_weights: int = 0

    def record(self) -> dict[str, Any]:
        """The file's entry for ``config.json`` (file name, checksum, size, parity)."""
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "int8_weights": self.int8_weights,
            "parity": asdict(self.parity),
        }


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_int8` wrote and how faithful it is.

    Attributes:
        path: the int8 ONNX file.
        sha256: its checksum.
        bytes: its size.
        quantized_ops: quantised operator type → node count in the int8 graph (e.g.
            ``{"MatMulInteger": 1}``).
        parity: the comparison with the float32 ONNX model.
    """

    path: Path
    sha256: str
    bytes: int
    quantized_ops: dict[str, int]
    parity: ParityReport
    op_types: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The file's entry for ``config.json``."""
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "quantized": "dynamic, weights int8 per tensor, activations uint8 at run time",
            "op_types": self.op_types,
            "quantized_ops": self.quantized_ops,
            "parity": asdict(self.parity),
        }


def exporter_name() -> str:
    """The exporter and the versions that produced a graph, for the record."""
    import onnxscript

    versions = f"torch {torch.__version__}, onnxscript {onnxscript.__version__}"
    return f"torch.onnx.export(dynamo=True), {versions}"


def parity_inputs(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    seed: int = 0,
) -> list[np.ndarray]:
    """Deterministic test batches, two per batch size: noise and natural-looking images.

    The noise batch is standard normal (far outside what preprocessing produces, it
    stresses every activation range); the natural one is smooth colour fields with
    fine-grained texture in ``[0, 1]``, normalised with ``mean``/``std`` like real photos.
    """
    generator = torch.Generator().manual_seed(seed)
    mean_t = torch.tensor(list(mean)).view(1, 3, 1, 1)
    std_t = torch.tensor(list(std)).view(1, 3, 1, 1)
    batches = []
    for size in batch_sizes:
        batches.append(torch.randn(size, 3, image_size, image_size, generator=generator))
        coarse = torch.rand(size, 3, 4, 4, generator=generator)
        smooth = F.interpolate(coarse, size=(image_size, image_size), mode="bicubic")
        texture = 0.1 * torch.randn(size, 3, image_size, image_size, generator=generator)
        natural = (smooth + texture).clamp(0, 1)
        batches.append((natural - mean_t) / std_t)
    return [b.numpy().astype(np.float32) for b in batches]


def compare_embeddings(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], name: str, batches: list[int]
) -> ParityReport:
    """Parity of ``candidate`` with ``reference`` (matching lists of ``(B, D)`` arrays)."""
    ref = np.concatenate(reference).astype(np.float64)
    out = np.concatenate(candidate).astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    cosine = (ref * out).sum(axis=1) / np.maximum(norms, 1e-12)
    return ParityReport(
        reference=name,
        max_abs_diff=float(np.abs(ref - out).max()),
        min_cosine=float(cosine.min()),
        images=len(ref),
        batch_sizes=batches,
    )


def _graph_opset(onnx_model: Any) -> int:
    return next(o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx"))


def _temp_file(path: Path) -> Path:
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    return Path(name)


def _move_into_place(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    # mkstemp makes owner-only files; keep the mode of the file replaced (config.json), and
    # make a new file readable like the rest of the artifact.
    os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
    os.replace(tmp, path)


def _run_exporter(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    # The exporter narrates every stage on stdout and warns about internals; a CLI user
    # should see the parity numbers, not that.
    with (
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            external_data=False,
            verbose=False,
        )


def _output_channel_axis(node: Any) -> int | None:
    """Axis of ``node``'s weight (input 1) that indexes output channels, or None."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return 1
    return None


def store_int8_weights(onnx_model: Any, tolerance: float = 1e-3) -> int:
    """Store, losslessly, the weights that are int8 per output channel as int8 + scale.

    A model loaded from an ``int8`` artifact has weights ``q * scale[c]`` (see
    :mod:`openrecog.models.compression`). BatchNorm folding by the exporter multiplies each
    output channel by one factor, so the folded weights are still exactly of that form:
    such a weight is replaced by its int8 ``q``, a float32 scale per output channel and a
    ``DequantizeLinear``, which computes the very same float32 values. The shipped model's
    ONNX file thus takes 4 MB instead of 15 MB; onnxruntime folds the dequantisation into
    float32 weights once, at load (see :func:`~openrecog.models.onnx_engine.create_session`),
    so it runs as fast as the float32 file. Weights that are not of that form (those of
    float32 artifacts, small tensors the artifact keeps in float) are left as they are:
    this never changes what the graph computes by more than float rounding.

    Args:
        onnx_model: an ``onnx.ModelProto``, changed in place.
        tolerance: largest distance of ``weight / scale`` from an integer, in units of the
            quantisation step, for a weight to count as int8.

    Returns:
        How many weight tensors are now stored as int8.
    """
    from onnx import helper, numpy_helper

    graph = onnx_model.graph
    initializers = {init.name: init for init in graph.initializer}
    axes: dict[str, int] = {}
    for node in graph.node:
        axis = _output_channel_axis(node)
        if axis is not None and len(node.input) > 1 and node.input[1] in initializers:
            axes.setdefault(node.input[1], axis)
    dequantize_nodes = []
    for name, axis in axes.items():
        weight = numpy_helper.to_array(initializers[name])
        if weight.dtype != np.float32 or weight.ndim < 2 or weight.size < INT8_MIN_NUMEL:
            continue
        rows = np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1).astype(np.float64)
        max_abs = np.abs(rows).max(axis=1)
        scale = np.where(max_abs > 0, max_abs / INT8_QMAX, 1.0)
        steps = rows / scale[:, None]
        if np.abs(steps - np.round(steps)).max() > tolerance:
            continue
        shape = [1] * weight.ndim
        shape[axis] = -1
        q = np.round(np.moveaxis(steps.reshape(np.moveaxis(weight, axis, 0).shape), 0, axis))
        graph.initializer.remove(initializers[name])
        graph.initializer.extend(
            [
                numpy_helper.from_array(q.astype(np.int8), f"{name}.int8"),
                numpy_helper.from_array(scale.astype(np.float32), f"{name}.scale"),
            ]
        )
        dequantize_nodes.append(
            helper.make_node(
                "DequantizeLinear", [f"{name}.int8", f"{name}.scale"], [name], axis=axis
            )
        )
    for position, node in enumerate(dequantize_nodes):
        graph.node.insert(position, node)  # before every use: nodes are topologically sorted
    return len(dequantize_nodes)


def restore_float_weights(onnx_model: Any) -> int:
    """Undo :func:`store_int8_weights`: dequantise int8-stored weights into float32 ones.

    Dynamic quantisation (:func:`quantize_int8`) looks for float32 weight initialisers and
    would not see a weight behind a ``DequantizeLinear``.

    Args:
        onnx_model: an ``onnx.ModelProto``, changed in place.

    Returns:
        How many weights were restored.
    """
    from onnx import numpy_helper

    graph = onnx_model.graph
    initializers = {init.name: init for init in graph.initializer}
    restored = 0
    for node in list(graph.node):
        if node.op_type != "DequantizeLinear" or len(node.input) != 2:
            continue
        if not all(name in initializers for name in node.input):
            continue
        q, scale = (numpy_helper.to_array(initializers[name]) for name in node.input)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * q.ndim
        shape[axis] = -1
        weight = (q.astype(np.float32) * scale.reshape(shape)).astype(np.float32)
        graph.node.remove(node)
        for name in node.input:
            graph.initializer.remove(initializers[name])
        graph.initializer.append(numpy_helper.from_array(weight, node.output[0]))
        restored += 1
    return restored


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    min_cosine: float = MIN_PARITY_COSINE,
    seed: int = 0,
) -> OnnxExportReport:
    """Export ``model`` to the ONNX file ``path`` and check it against PyTorch.

    The file is written only once the check passes (temporary file, then rename). The
    check runs both on onnxruntime's CPU provider with every graph optimisation on (as
    :class:`~openrecog.models.onnx_engine.OnnxEngine` runs it) and on the model in float32 on
    the CPU, over :func:`parity_inputs` at each of ``batch_sizes``.

    Args:
        model: an :class:`~openrecog.models.embedder.Embedder` or
            :class:`~openrecog.models.ensemble.EnsembleEmbedder` (left unchanged; exported
            from a CPU copy in eval mode). Its ``config.tta`` views are exported into the
            graph.
        path: the ``.onnx`` file to write.
        opset: ONNX opset (18, the exporter's own, is the tested one).
        batch_sizes: batch sizes of the parity check (the graph's batch size is dynamic).
        min_cosine: refuse the export below this cosine with PyTorch.
        seed: seed of the parity inputs.

    Returns:
        The :class:`OnnxExportReport` (file, checksum, opset, exporter, parity).

    Raises:
        ValueError: the exporter fails on this model (with its reason; a TTA model is named
            as such) or the parity is below ``min_cosine`` (with the numbers).
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = model.config
    pre = resolve_preprocessing(config)
    size = int(pre["image_size"])
    cpu_model = copy.deepcopy(model).float().cpu().eval()
    tmp = _temp_file(path)
    try:
        # torch.export specialises a dimension of size 1, so the traced batch must be >= 2.
        example = torch.zeros(2, 3, size, size)
        try:
            _run_exporter(cpu_model, example, tmp, opset)
        except Exception as exc:  # the exporter raises many types; all mean "cannot export"
            what, hint = config.backbone, ""
            if config.tta != "none":
                what += f" with tta={config.tta!r} (its views inside the graph)"
                hint = "; export it with --tta none"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(
                f"cannot export {what} to ONNX ({type(exc).__name__}: {first}){hint}"
            ) from exc
        graph = onnx.load(str(tmp))
        graph.metadata_props.extend(
            onnx.StringStringEntryProto(key=_METADATA_PREFIX + key, value=value)
            for key, value in {
                "preprocessing": json.dumps(pre),
                "embedding_dim": str(model.embedding_dim),
                "tta": config.tta,
            }.items()
        )
        int8_weights = store_int8_weights(graph)
        onnx.save(graph, str(tmp))
        inputs = parity_inputs(size, pre["mean"], pre["std"], batch_sizes, seed)
        with torch.inference_mode():
            reference = [cpu_model(torch.from_numpy(x)).float().numpy() for x in inputs]
        session = create_session(tmp, providers=[CPU_PROVIDER])
        outputs = [session.run([OUTPUT_NAME], {INPUT_NAME: x})[0] for x in inputs]
        if any(out.shape != ref.shape for out, ref in zip(outputs, reference, strict=True)):
            raise ValueError("the ONNX graph's output shape differs from the model's")
        parity = compare_embeddings(reference, outputs, "pytorch", list(batch_sizes))
        if not parity.min_cosine >= min_cosine:  # also catches NaN
            raise ValueError(
                f"ONNX export of {config.backbone} does not match PyTorch: {parity.summary()} "
                f"(needs min cosine >= {min_cosine})"
            )
        _move_into_place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return OnnxExportReport(
        path=path,
        sha256=sha256_file(path),
        bytes=path.stat().st_size,
        opset=_graph_opset(graph),
        exporter=exporter_name(),
        parity=parity,
        int8_weights=int8_weights,
    )


def _preprocessing_of(onnx_model: Any) -> dict[str, Any] | None:
    for prop in onnx_model.metadata_props:
        if prop.key == _METADATA_PREFIX + "preprocessing":
            return json.loads(prop.value)
    return None


def quantize_int8(
    src: str | Path,
    dst: str | Path,
    *,
    op_types: Sequence[str] = INT8_OP_TYPES,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    seed: int = 0,
) -> QuantizeReport:
    """Dynamic int8 quantisation of an ONNX embedding model, with its parity to float32.

    ``onnxruntime.quantization.quantize_dynamic`` stores the weights of the ``op_types``
    nodes as int8 and quantises their activations to uint8 at run time (no calibration
    data). By default only ``MatMul``/``Gemm`` (the neck's projection) are quantised:
    measured on the shipped ``default`` model (EfficientNet-Lite0, 224 px, 2-core EPYC),
    also quantising the convolutions (``ConvInteger``) drops the min cosine to float32 to
    0.68 (0.88 with uint8 weights; per-channel weights do not help) *and* runs 5-8x
    slower than float32, because the per-tensor activation scale ruins the depthwise
    convolutions and onnxruntime's ``ConvInteger`` kernels are slow. So the int8 file is
    only slightly smaller and about as fast as the float32 one; a real int8 speed-up would
    need static (calibrated, QDQ) quantisation. The parity is reported, not enforced: it
    may be below :data:`MIN_PARITY_COSINE`.

    Args:
        src: the float32 ONNX file (from :func:`export_onnx`).
        dst: the int8 ONNX file to write (replaced only once complete).
        op_types: operator types to quantise (e.g. add ``"Conv"`` to measure it).
        batch_sizes: batch sizes of the parity check.
        seed: seed of the parity inputs.

    Returns:
        The :class:`QuantizeReport` with the quantised operator counts and the parity.

    Raises:
        ValueError: ``src`` is not a readable ONNX embedding model.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    try:
        source = onnx.load(str(src))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise ValueError(f"{src}: not a readable ONNX model ({exc})") from exc
    shape = source.graph.input[0].type.tensor_type.shape.dim
    size = shape[2].dim_value
    pre = _preprocessing_of(source) or {"mean": [0.5] * 3, "std": [0.5] * 3}
    tmp = _temp_file(dst)
    float_source = _temp_file(dst)
    try:
        restore_float_weights(source)
        before = Counter(node.op_type for node in source.graph.node)
        onnx.save(source, str(float_source))
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # quantize_dynamic warns through the root logger about missing pre-processing.
            logger = logging.getLogger()
            level = logger.level
            logger.setLevel(logging.ERROR)
            try:
                quantize_dynamic(
                    float_source,
                    tmp,
                    op_types_to_quantize=list(op_types),
                    weight_type=QuantType.QInt8,
                )
            finally:
                logger.setLevel(level)
        quantized = onnx.load(str(tmp))
        if store_int8_weights(quantized):  # what was int8-stored in src stays so
            onnx.save(quantized, str(tmp))
        after = Counter(node.op_type for node in quantized.graph.node)
        quantized_ops = {
            op: count
            for op, count in sorted(after.items())
            if op.endswith("Integer") or (op.startswith("QLinear") and op not in before)
        }
        inputs = parity_inputs(size, pre["mean"], pre["std"], batch_sizes, seed)
        fp32 = create_session(src, providers=[CPU_PROVIDER])
        int8 = create_session(tmp, providers=[CPU_PROVIDER])
        name = fp32.get_inputs()[0].name
        reference = [fp32.run(None, {name: x})[0] for x in inputs]
        outputs = [int8.run(None, {name: x})[0] for x in inputs]
        parity = compare_embeddings(reference, outputs, "onnx-fp32", list(batch_sizes))
        _move_into_place(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
        float_source.unlink(missing_ok=True)
    return QuantizeReport(
        path=dst,
        sha256=sha256_file(dst),
        bytes=dst.stat().st_size,
        quantized_ops=quantized_ops,
        parity=parity,
        op_types=list(op_types),
    )


@dataclass(frozen=True)
class ArtifactOnnxReport:
    """What :func:`add_onnx_to_artifact` added to an artifact folder."""

    fp32: OnnxExportReport
    int8: QuantizeReport | None
    section: dict[str, Any]


def add_onnx_to_artifact(
    path: str | Path,
    *,
    int8: bool = False,
    model: nn.Module | None = None,
    opset: int = DEFAULT_OPSET,
) -> ArtifactOnnxReport:
    """Export an artifact's model to ``model.onnx`` (and ``model.int8.onnx``) in its folder.

    The ONNX graph is exported from the model *as loaded from the artifact* (float16 or
    int8 stored weights dequantised), so PyTorch and onnxruntime compute the same thing for
    it. ``config.json`` gets an ``onnx`` section: opset, exporter, the weights' SHA-256 it
    was exported from, and per file its name, SHA-256, size and parity. The ONNX files are
    complete before ``config.json`` is replaced (atomically) to name them; on any failure
    the artifact is left without ONNX (its weights and configuration untouched).

    Args:
        path: an artifact folder written by
            :func:`~openrecog.models.artifact.save_artifact`.
        int8: also write the dynamically quantised ``model.int8.onnx``.
        model: the model already loaded from ``path`` (saves loading it again).
        opset: ONNX opset.

    Raises:
        ArtifactError: ``path`` is not a valid artifact, or ``model`` is not its model.
        ValueError: the export fails or does not match PyTorch (see :func:`export_onnx`).
    """
    path = Path(path)
    if model is None:
        model = load_artifact(path)
    config_path = path / CONFIG_FILE
    config = read_json(config_path, ArtifactError)
    if loaded_weights_sha256(model) != config.get("weights_sha256"):
        raise ArtifactError(f"{path}: the given model was not loaded from this artifact")
    if config.pop(ONNX_SECTION, None) is not None:
        # Forget the old files before replacing them, so that no moment has config.json
        # naming a file with another checksum.
        _write_json(config_path, config)
    written = [path / ONNX_FILE, path / ONNX_INT8_FILE]
    try:
        fp32 = export_onnx(model, written[0], opset=opset)
        section: dict[str, Any] = {
            "opset": fp32.opset,
            "exporter": fp32.exporter,
            "weights_sha256": config["weights_sha256"],
            "input": {"name": INPUT_NAME, "shape": ["batch", 3, "image_size", "image_size"]},
            "output": {"name": OUTPUT_NAME, "shape": ["batch", "embedding_dim"]},
            "fp32": fp32.record(),
        }
        quantized = None
        if int8:
            quantized = quantize_int8(fp32.path, written[1])
            section["int8"] = quantized.record()
        else:
            written[1].unlink(missing_ok=True)
        _write_json(config_path, {**config, ONNX_SECTION: section})
    except BaseException:
        for file in written:
            file.unlink(missing_ok=True)
        raise
    return ArtifactOnnxReport(fp32=fp32, int8=quantized, section=section)


def _write_json(path: Path, data: Any) -> None:
    tmp = _temp_file(path)
    try:
        tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
        _move_into_place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
