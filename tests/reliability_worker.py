"""The gallery writer that :func:`tests.reliability_tools.kill_loop` kills at random moments.

Usage: ``python tests/reliability_worker.py GALLERY SEED``. It imports openrecog once,
prints ``ZYGOTE``, then forks one writer per ``FORK <round>`` line read from stdin and
prints ``DEAD <pid>`` when that writer is gone. A writer prints ``PID``, loads the gallery,
prints ``READY <ids>`` and then, until it is killed: registers an image (label and source
derived from the new item id) or removes an item, prints ``PENDING <ids>``, saves, and
prints ``ACK <ids>`` once the save has returned. Each line is one short ``write`` to a
pipe, so it arrives whole or not at all.
"""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path


def _say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def _ids(gallery) -> str:
    return json.dumps(sorted(item["item_id"] for item in gallery.items()))


def writer(path: Path, seed: int) -> None:
    """Register, remove and save ``path`` forever (until killed)."""
    import torch

    from openrecog.gallery import Gallery
    from tests.reliability_tools import item_label, item_source, noise_image

    torch.set_num_threads(1)
    rng = random.Random(seed)
    gallery = Gallery.load(path, device="cpu")
    _say(f"READY {_ids(gallery)}")
    while True:
        items = [item["item_id"] for item in gallery.items()]
        if items and (len(items) > 24 or rng.random() < 0.35):
            gallery.remove(rng.choice(items))
        else:
            # The id it will get: the store's next id (ids are never reused).
            next_id = gallery._store.next_id
            image = noise_image((32, 32), seed=next_id)
            new = gallery.register(image, item_label(next_id), source=item_source(next_id))
            assert new == next_id
        _say(f"PENDING {_ids(gallery)}")
        gallery.save(path)
        _say(f"ACK {_ids(gallery)}")


def main() -> None:
    """Fork writers on request; report each one's end."""
    path, seed = Path(sys.argv[1]), int(sys.argv[2])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import openrecog.gallery  # noqa: F401  (imported once here, shared by every fork)
    import tests.reliability_tools  # noqa: F401

    _say("ZYGOTE")
    for line in sys.stdin:
        _, round_ = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                _say(f"PID {os.getpid()}")
                writer(path, seed * 100_003 + int(round_))
            except BaseException as exc:  # reported to the loop, which counts it
                _say(f"ERROR {type(exc).__name__}: {exc}".replace("\n", " "))
            finally:
                os._exit(1)
        os.waitpid(pid, 0)
        _say(f"DEAD {pid}")


if __name__ == "__main__":
    main()
