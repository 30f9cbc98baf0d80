"""Concurrent register / remove / classify through the HTTP API keep the gallery consistent.

Threads share one TestClient (the app's threadpool runs the requests in parallel); every
count is fixed, so the final gallery is known exactly: in memory, over HTTP and on disk.
"""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from openrecog.gallery import Gallery
from openrecog.serve import ServeSettings, create_app
from tests.reliability_tools import encode, noise_image, tiny_model, torch_threads

KEY = "concurrency-key"
AUTH = {"X-API-Key": KEY}
WRITERS, ROUNDS, PER_ROUND = 4, 5, 2
READERS, READS = 3, 10


@pytest.fixture(autouse=True)
def _setup(monkeypatch):
    monkeypatch.delenv("OPENRECOG_API_KEY", raising=False)
    with torch_threads(1):
        yield


def _png(seed: int) -> bytes:
    return encode(noise_image((32, 32), seed=seed), "PNG")


def _register(client: TestClient, label: str, seeds: list[int]):
    files = [("files", (f"{label}_{s}.png", _png(s), "image/png")) for s in seeds]
    return client.post("/register", data={"label": label}, files=files, headers=AUTH)


def test_parallel_register_remove_classify_keeps_the_gallery_consistent(tmp_path) -> None:
    path = tmp_path / "g"
    app = create_app(Gallery(tiny_model(), threshold=0.0), path, ServeSettings(api_key=KEY))
    client = TestClient(app)
    base: dict[int, str] = {}
    for kind in range(4):
        r = _register(client, f"base_{kind}", [1000 + 10 * kind, 1001 + 10 * kind])
        assert r.status_code == 200, r.text
        base.update({item_id: f"base_{kind}" for item_id in r.json()["added"]})
    base_ids = sorted(base)
    errors: list[str] = []
    added: dict[int, str] = {}
    removed: list[int] = []
    contested: list[int] = []  # status codes of two threads deleting the same item
    lock = threading.Lock()

    def writer(t: int) -> None:
        for round_ in range(ROUNDS):
            seeds = [t * 100 + round_ * PER_ROUND + j for j in range(PER_ROUND)]
            r = _register(client, f"writer_{t}", seeds)
            if r.status_code != 200:
                errors.append(f"register: {r.status_code} {r.text}")
                continue
            with lock:
                added.update({i: f"writer_{t}" for i in r.json()["added"]})

    def remover(own: list[int], shared: int) -> None:
        for item_id in own:
            r = client.delete(f"/items/{item_id}", headers=AUTH)
            if r.status_code != 200:
                errors.append(f"remove {item_id}: {r.status_code} {r.text}")
            else:
                with lock:
                    removed.append(item_id)
        r = client.delete(f"/items/{shared}", headers=AUTH)
        with lock:
            contested.append(r.status_code)
            if r.status_code == 200:
                removed.append(shared)

    def class_remover() -> None:
        r = client.delete("/classes/base_3", headers=AUTH)
        if r.status_code != 200 or r.json()["removed"] != 2:
            errors.append(f"remove class: {r.status_code} {r.text}")

    # Items never removed, queried by the readers: each must come back as itself.
    stays = {base_ids[0]: 1000, base_ids[3]: 1011, base_ids[4]: 1020}

    def reader(t: int) -> None:
        for n in range(READS):
            item_id, seed = list(stays.items())[(n + t) % 3]
            r = client.post("/classify", files={"file": ("q.png", _png(seed))}, params={"k": 3})
            if r.status_code != 200:
                errors.append(f"classify: {r.status_code} {r.text}")
            elif r.json()["top"][0]["item_id"] != item_id:
                errors.append(f"classify {item_id}: {r.json()}")

    # base_0 .. base_2 lose one item each, by two removers that also both try base_1's
    # first item; base_3 goes as a class.
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(WRITERS)]
    threads += [
        threading.Thread(target=remover, args=([base_ids[1]], base_ids[2])),
        threading.Thread(target=remover, args=([base_ids[5]], base_ids[2])),
        threading.Thread(target=class_remover),
    ]
    threads += [threading.Thread(target=reader, args=(t,)) for t in range(READERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a request hung"
    assert not errors, errors[:5]
    assert sorted(contested) == [200, 404]  # exactly one of the two deletions won
    assert len(added) == WRITERS * ROUNDS * PER_ROUND
    expected = {i: label for i, label in base.items() if label != "base_3" and i not in removed}
    expected.update(added)
    assert len(expected) == 8 - 2 - 3 + WRITERS * ROUNDS * PER_ROUND
    listed = client.get("/items", params={"limit": 1000}).json()
    assert {item["item_id"]: item["label"] for item in listed["items"]} == expected
    assert listed["total"] == len(expected)
    health = client.get("/health").json()
    assert health["items"] == len(expected) and health["classes"] == 3 + WRITERS
    # What is on disk is the same (every write was saved, the last save saw everything).
    on_disk = Gallery.load(path).items()
    assert {item["item_id"]: item["label"] for item in on_disk} == expected
    # Every writer's images are found as themselves.
    for t in range(WRITERS):
        r = client.post("/classify", files={"file": ("q.png", _png(t * 100))}, params={"k": 1})
        top = r.json()["top"][0]
        assert top["label"] == f"writer_{t}" and top["score"] == pytest.approx(1.0, abs=1e-4)


def test_a_server_never_overwrites_changes_of_another_process(tmp_path) -> None:
    path = tmp_path / "g"
    Gallery(tiny_model(), threshold=0.0).save(path)
    client = TestClient(create_app(Gallery.load(path), path, ServeSettings(api_key=KEY)))
    assert _register(client, "served", [1]).status_code == 200
    # `openrecog register` on the served folder, from another process
    other = Gallery.load(path)
    other.register(noise_image((32, 32), seed=2), "from_cli")
    other.save(path)
    for r in (
        _register(client, "served", [3]),
        client.delete("/items/0", headers=AUTH),
        client.delete("/classes/served", headers=AUTH),
    ):
        assert r.status_code == 409 and "changed by another process" in r.json()["detail"]
    assert Gallery.load(path).classes() == {"from_cli": 1, "served": 1}  # nothing lost
    assert client.get("/health").json()["items"] == 1  # and nothing changed in memory
    restarted = TestClient(create_app(Gallery.load(path), path, ServeSettings(api_key=KEY)))
    assert _register(restarted, "served", [3]).status_code == 200
    assert Gallery.load(path).classes() == {"from_cli": 1, "served": 2}
