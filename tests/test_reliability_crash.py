"""Crash safety: killed writers leave a gallery that loads with every acknowledged item,
and a killed training run resumes exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from openrecog import storage
from openrecog.gallery import Gallery
from openrecog.models import save_artifact
from tests.reliability_tools import kill_loop, noise_image, tiny_model, torch_threads

STEPS = 80  # of the training run that is killed and resumed


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def test_sigkill_during_register_remove_save_loses_nothing(model, tmp_path) -> None:
    path = Gallery(model, threshold=0.0).save(tmp_path / "g")
    report = kill_loop(path, kills=20, seed=3, max_delay_s=0.5, time_budget_s=50)
    assert report.ok, report
    assert report.kills >= 10, report  # the time budget allows well over that
    assert report.saves_acknowledged > report.kills  # the writers got real work done
    Gallery.load(path)


class Killed(BaseException):
    """Stands for SIGKILL at one exact point (BaseException: no handler catches it)."""


def _crash_at(monkeypatch, step: int, pid: int) -> list[str]:
    """Make the ``step``-th rename or rmtree inside storage die; rmtree half-way.

    ``pid`` stands for the process id of the saving process: each restart has its own.
    """
    calls: list[str] = []
    real_rename, real_rmtree = os.rename, shutil.rmtree

    def rename(src, dst):
        calls.append("rename")
        if len(calls) - 1 == step:
            raise Killed
        real_rename(src, dst)

    def rmtree(path, ignore_errors=False):
        calls.append("rmtree")
        if len(calls) - 1 == step:
            for file in Path(path).rglob("items.json"):  # some files gone, others not
                file.unlink()
            raise Killed
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(storage.os, "getpid", lambda: pid)
    monkeypatch.setattr(storage.os, "rename", rename)
    monkeypatch.setattr(storage.shutil, "rmtree", rmtree)
    return calls


def _vectors(count: int) -> np.ndarray:
    vectors = np.random.default_rng(count).standard_normal((count, 16)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _save_with_crash(monkeypatch, path: Path, items: int, step: int) -> bool:
    """Load ``path`` (a restart), add to ``items`` items, save dying at ``step``."""
    gallery = Gallery.load(path)
    gallery.add_embeddings(_vectors(items - len(gallery)), ["x"] * (items - len(gallery)))
    calls = _crash_at(monkeypatch, step, pid=100_000 + items)
    try:
        gallery.save(path)
        crashed = False
    except Killed:
        crashed = True
    monkeypatch.undo()
    assert calls, "the save did not go through storage"
    return crashed


def test_two_crashes_in_a_row_at_every_point(model, tmp_path, monkeypatch) -> None:
    # A save killed while deleting the old copy, then the next save killed between its two
    # renames: the loader must still find the newest complete gallery, not the half-deleted
    # one (this failed before replace_dir discarded stale copies first).
    for first in range(8):  # every rename/rmtree of the first save, then one past them
        for second in range(8):
            path = tmp_path / f"{first}-{second}" / "g"
            base = Gallery(model)
            base.add_embeddings(_vectors(1), ["x"])
            base.save(path)
            first_crashed = _save_with_crash(monkeypatch, path, 2, first)
            before = len(Gallery.load(path))
            assert before in ({1, 2} if first_crashed else {2}), (first, second)
            crashed = _save_with_crash(monkeypatch, path, 3, second)
            found = len(Gallery.load(path))
            assert found in ({before, 3} if crashed else {3}), (first, second, found)
            if not crashed:
                break
        if not first_crashed:
            break


def test_cli_register_after_an_interrupted_save_keeps_the_items(model, tmp_path) -> None:
    from openrecog.cli.main import app

    model_dir = save_artifact(model, tmp_path / "model")
    gallery = Gallery(model)
    gallery.register(noise_image(seed=1), "kept")
    path = gallery.save(tmp_path / "g")
    os.rename(path, tmp_path / "g.old-12345")  # killed between the renames of a save
    image = tmp_path / "new.png"
    noise_image(seed=2).save(image)
    result = CliRunner().invoke(
        app, ["register", str(path), str(image), "--model", str(model_dir), "--label", "new"]
    )
    assert result.exit_code == 0, result.output
    assert Gallery.load(path).classes() == {"kept": 1, "new": 1}  # not a fresh gallery


def _train_command(root: Path, out: Path, *extra: str) -> list[str]:
    overrides = [
        "model.backbone=lcnet_050",
        "model.pretrained=false",
        "model.image_size=32",
        "model.embedding_dim=16",
        "data.source=folder",
        f"data.root={root}",
        "data.images_per_class=2",
        "train.batch_size=8",
        f"train.max_steps={STEPS}",
        "train.schedule=cosine",
        "train.checkpoint_every=4",
        "train.keep_checkpoints=2",
        "train.log_every=1",
        "train.progress=false",
        "train.name=killed",
        f"train.output_dir={out}",
        "eval.source=none",
        "loss.sample_rate=0.5",
    ]
    return [sys.executable, "-m", "openrecog", "train", *overrides, *extra]


def _losses(run_dir: Path) -> dict[int, list[float]]:
    """Every logged loss by step; a line cut by the kill is skipped."""
    found: dict[int, list[float]] = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "loss" in record:
            found.setdefault(record["step"], []).append(record["loss"])
    return found


def test_sigkilled_training_resumes_exactly(pattern_folder, tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "killed"
    checkpoints = run_dir / "checkpoints"
    proc = subprocess.Popen(
        _train_command(pattern_folder, tmp_path),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    try:
        # Kill once a checkpoint exists and the run has gone some steps past it.
        while time.monotonic() < deadline and proc.poll() is None:
            done = sorted(checkpoints.glob("step_*")) if checkpoints.is_dir() else []
            logged = _losses(run_dir) if (run_dir / "log.jsonl").is_file() else {}
            if done and max(logged, default=0) >= int(done[0].name[5:]) + 2:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = max(_losses(run_dir))
    assert killed_at < STEPS
    command = [*_train_command(pattern_folder, tmp_path), "--resume"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    after = _losses(run_dir)
    twice = {step: values for step, values in after.items() if len(values) == 2}
    assert twice, after
    # It went on from its newest complete checkpoint (checkpoint_every=4) ...
    assert min(twice) % 4 == 1 and min(twice) <= killed_at
    # ... and the steps run both before the kill and after the resume have the same loss.
    for step, (first, second) in twice.items():
        assert first == second, (step, first, second)
    assert sorted(after) == list(range(1, STEPS + 1))  # no step missing
    assert (run_dir / "last" / "weights.safetensors").is_file()


def test_checkpoint_killed_mid_write_is_never_listed(tmp_path, monkeypatch) -> None:
    from openrecog.train import checkpoint

    state = {"step": 4, "weights": torch.arange(6.0)}
    checkpoint.save_checkpoint(state, {"head": torch.ones(2)}, tmp_path, step=4, keep=3)
    real_save = torch.save

    def dies_half_way(obj, handle):
        real_save(obj, handle)
        handle.truncate(handle.tell() // 2)  # half a file on disk, then the kill
        raise Killed

    monkeypatch.setattr(checkpoint.torch, "save", dies_half_way)
    with pytest.raises(Killed):
        checkpoint.save_checkpoint({**state, "step": 8}, {}, tmp_path, step=8, keep=3)
    monkeypatch.undo()
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_00000004"]
    assert checkpoint.load_checkpoint(checkpoint.list_checkpoints(tmp_path)[-1])["step"] == 4
    # the resumed run writes step 8 again over the leftovers
    checkpoint.save_checkpoint({**state, "step": 8}, {}, tmp_path, step=8, keep=3)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)][-1] == "step_00000008"
    assert not list(tmp_path.glob(".step_*"))
