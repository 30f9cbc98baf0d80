"""onnxruntime inference for models exported with :func:`~openrecog.models.onnx_export.export_onnx`.

An artifact folder may hold ``model.onnx`` (float32) and ``model.int8.onnx`` next to its
``config.json`` + ``weights.safetensors``; ``config.json`` records them in its ``onnx``
section (file name, SHA-256, parity with PyTorch, opset, exporter). :class:`OnnxEngine` checks
the SHA-256 of the exact bytes it hands to onnxruntime, so a file changed after the export is
refused rather than silently run.

The ``onnx`` section is a top-level key of ``config.json``, not part of ``metadata``: the
commands that write a new artifact from a loaded model (``pca``, ``export`` without
``--onnx``, a gallery's copy of its model) copy ``metadata`` forward, and would otherwise
claim ONNX files that the new folder does not have.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from openrecog.models.artifact import (
    CONFIG_FILE,
    ArtifactError,
    artifact_config_matches,
    loaded_weights_sha256,
    read_artifact_config,
)

ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model.int8.onnx"
ONNX_SECTION = "onnx"
"""Key of the ``config.json`` section describing the ONNX files."""

ONNX_VARIANTS: dict[str, str] = {"fp32": ONNX_FILE, "int8": ONNX_INT8_FILE}
"""Variant name in the ``onnx`` section → file name in the artifact folder."""

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


class OnnxUnavailableError(ValueError):
    """No usable ONNX file for a model (none exported, model changed since, no onnxruntime).

    ``ImageEncoder(engine="auto")`` falls back to PyTorch on this error; a tampered file is an
    :class:`~openrecog.models.artifact.ArtifactError` instead and is never skipped silently.
    """


def onnxruntime_available() -> bool:
    """Whether ``onnxruntime`` can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def default_providers() -> list[str]:
    """CUDA (when this onnxruntime build has it) then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in (CUDA_PROVIDER, CPU_PROVIDER) if p in available]


def create_session(
    model: bytes | str | Path,
    providers: list[str] | None = None,
    threads: int | None = None,
    spinning: bool = True,
) -> Any:
    """An ``onnxruntime.InferenceSession`` with all graph optimisations enabled.

    Args:
        model: the serialised ONNX model or a path to it.
        providers: execution providers in order of preference (default:
            :func:`default_providers`).
        threads: intra-op threads (``None``: onnxruntime's default, one per physical core).
        spinning: let idle intra-op threads spin-wait for the next piece of work
            (onnxruntime's default: lowest latency for one caller at a time). A server that
            runs several requests at once turns it off: spinning threads burn the cores the
            other requests need.

    Raises:
        ValueError: ``threads`` is not positive.
    """
    import onnxruntime as ort

    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 (got {threads})")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The graph is one chain of convolutions: parallel branches would only contend with the
    # intra-op threads for the same cores.
    options.inter_op_num_threads = 1
    # Lets constant folding turn the DequantizeLinear of int8-stored weights (see
    # onnx_export.store_int8_weights) into float32 weights once, at load: otherwise
    # onnxruntime keeps them for QDQ fusion and dequantises every weight on every run (3.4x
    # slower for the shipped model). Dynamically quantised graphs do not use QDQ fusion.
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    if threads is not None:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=providers or default_providers())


def recorded_onnx(artifact_dir: str | Path, variant: str = "fp32") -> dict[str, Any] | None:
    """The ``config.json`` record of an artifact's ONNX file ``variant``, or None.

    The record holds ``file``, ``sha256``, ``bytes`` and ``parity``, plus the section-wide
    ``opset``, ``exporter`` and ``weights_sha256`` (the weights it was exported from).

    Raises:
        ValueError: unknown ``variant``.
        ArtifactError: the folder is not a readable artifact.
    """
    if variant not in ONNX_VARIANTS:
        raise ValueError(
            f"unknown ONNX variant {variant!r}; choose one of {', '.join(ONNX_VARIANTS)}"
        )
    section = read_artifact_config(artifact_dir).get(ONNX_SECTION)
    if not isinstance(section, dict) or not isinstance(section.get(variant), dict):
        return None
    shared = {k: v for k, v in section.items() if k not in ONNX_VARIANTS}
    return {**shared, **section[variant]}


def artifact_onnx_path(model: nn.Module, variant: str = "fp32") -> Path:
    """The ONNX file that computes exactly what ``model`` computes, from its artifact folder.

    ``model`` must come from :func:`~openrecog.models.artifact.load_artifact` (which sets
    ``artifact_path``) and be unchanged since: the artifact's ``onnx`` section must name the
    weights the model was loaded with and the artifact's model section must equal
    ``model.config`` (a later :meth:`~openrecog.models.embedder.Embedder.set_tta` changes what
    the model computes, not the ONNX graph). The file's checksum is checked by
    :class:`OnnxEngine`, not here.

    Raises:
        OnnxUnavailableError: onnxruntime is missing, the model has no artifact, the artifact
            has no such ONNX file, or the model no longer matches it.
    """
    folder = getattr(model, "artifact_path", None)
    if folder is None:
        raise OnnxUnavailableError("the model was not loaded from an artifact folder")
    try:
        config = read_artifact_config(folder)
        record = recorded_onnx(folder, variant)
    except ArtifactError as exc:
        raise OnnxUnavailableError(f"its artifact is unreadable now ({exc})") from exc
    if record is None:
        raise OnnxUnavailableError(
            f"{folder} has no {variant} ONNX export (openrecog export --onnx)"
        )
    # One digest of the model's state serves both weight checks (it hashes every weight).
    loaded_sha = loaded_weights_sha256(model)
    if record.get("weights_sha256") != loaded_sha:
        raise OnnxUnavailableError(
            f"{folder / record['file']} was exported from other weights than the model's "
            "(changed since it was loaded?)"
        )
    if config.get("weights_sha256") != loaded_sha or not artifact_config_matches(config, model):
        raise OnnxUnavailableError(
            f"the model's configuration changed since it was loaded from {folder} "
            "(e.g. its tta); the ONNX graph no longer matches it"
        )
    path = Path(folder) / record["file"]
    if not path.is_file():
        # A gallery's copy of a model keeps config.json and the weights only.
        raise OnnxUnavailableError(f"{path} is recorded in {CONFIG_FILE} but missing")
    if not onnxruntime_available():
        raise OnnxUnavailableError("onnxruntime is not installed")
    return path


class OnnxEngine:
    """Runs an exported embedding model with onnxruntime: ``(B, 3, H, W)`` → ``(B, D)``.

    The file's SHA-256 is checked against ``expected_sha256`` or, by default, against the
    record in the ``config.json`` of the artifact folder it lies in, on the very bytes given
    to onnxruntime.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (default: CUDA when available, then CPU).
        threads: intra-op threads (default: onnxruntime's, one per physical core).
        spinning: whether idle intra-op threads spin-wait (see :func:`create_session`).
        expected_sha256: checksum to verify instead of the artifact's record (for an ONNX
            file outside an artifact folder).

    Attributes:
        path: the ONNX file.
        providers: the providers the session actually uses.
        input_name / output_name: the graph's input and output names.
        image_size: the input's height (= width).
        embedding_dim: length of the output vectors.
        record: the artifact's record of the file (empty with ``expected_sha256``).

    Raises:
        ArtifactError: missing file, or a checksum that differs from the recorded one.
        ValueError: no recorded checksum to verify against, or a graph that does not look
            like an embedding model.
    """

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        threads: int | None = None,
        expected_sha256: str | None = None,
        spinning: bool = True,
    ) -> None:
        self.path = Path(path)
        self.record: dict[str, Any] = {}
        if expected_sha256 is None:
            expected_sha256 = self._recorded_sha256()
        if not self.path.is_file():
            raise ArtifactError(f"{self.path}: ONNX file not found")
        data = self.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected_sha256:
            raise ArtifactError(
                f"{self.path}: checksum mismatch with the recorded SHA-256 (file changed or "
                "corrupted); re-export it with `openrecog export MODEL OUT --onnx`"
            )
        self.session = create_session(data, providers=providers, threads=threads, spinning=spinning)
        self.providers: list[str] = self.session.get_providers()
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise ValueError(f"{self.path}: not an embedding model (one 4-d input, one output)")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.image_size = int(inputs[0].shape[2])
        self.embedding_dim = int(outputs[0].shape[1])

    def _recorded_sha256(self) -> str:
        folder, name = self.path.parent, self.path.name
        try:
            section = read_artifact_config(folder).get(ONNX_SECTION) or {}
        except ArtifactError as exc:
            raise ValueError(
                f"{self.path}: no recorded checksum to verify it against ({exc}); pass "
                "expected_sha256"
            ) from exc
        for variant in ONNX_VARIANTS:
            entry = section.get(variant)
            if isinstance(entry, dict) and entry.get("file") == name:
                self.record = {**entry, "variant": variant}
                return str(entry.get("sha256"))
        raise ValueError(
            f"{self.path}: not recorded in {folder / CONFIG_FILE}; pass expected_sha256"
        )

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Embed a preprocessed float32 batch ``(B, 3, H, W)`` → ``(B, D)`` float32.

        Raises:
            ValueError: the batch does not have the model's shape.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        expected = (3, self.image_size, self.image_size)
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(
                f"expected a (B, {', '.join(map(str, expected))}) batch, got {batch.shape}"
            )
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    __call__ = run
