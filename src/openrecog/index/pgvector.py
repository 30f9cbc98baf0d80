"""PostgreSQL + pgvector index: a gallery shared by several servers or larger than memory.

One table per gallery::

    id bigint primary key (identity), label text, source text, embedding vector(dim)

with an HNSW index on ``embedding vector_ip_ops`` (inner product = cosine similarity for the
L2-normalised embeddings openrecog produces). Scores are returned as the inner product,
``-(embedding <#> query)``, exactly like FAISS ``IndexFlatIP``.

The psycopg and pgvector packages are imported only when an index is created, so
``import openrecog`` works without them (``pip install 'openrecog[pg]'`` adds them).

Index specs, as accepted by :class:`openrecog.gallery.Gallery`::

    pgvector+postgresql://user@host:5432/dbname?table=my_gallery&ef_search=200

Passwords never belong in a spec that is saved or logged: :func:`redacted_dsn` removes them,
and libpq reads them from ``PGPASSWORD`` or ``~/.pgpass`` instead.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import numpy as np

SPEC_PREFIX = "pgvector+"
DEFAULT_TABLE = "openrecog_items"
URI_SCHEMES = ("postgresql", "postgres")
SPEC_FORMAT = "pgvector+postgresql://user@host:port/dbname?table=NAME"
# Table names are checked against a strict pattern before any SQL is built, and then still
# quoted with psycopg.sql.Identifier: an odd name is refused rather than escaped.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Short enough that the derived index names (<table>_embedding_hnsw) fit PostgreSQL's 63 bytes.
MAX_TABLE_NAME = 40
MIN_PGVECTOR_VERSION = (0, 5, 0)  # first release with HNSW
MAX_HNSW_DIM = 2000  # pgvector cannot build an HNSW index on wider `vector` columns
MAX_EF_SEARCH = 1000  # pgvector's upper bound for hnsw.ef_search
# Loading this many rows into an empty table drops the HNSW index and rebuilds it after the
# COPY: building once is ~3x faster than inserting row by row into the graph.
BULK_REBUILD_ROWS = 1000
# A graph that outgrows maintenance_work_mem (64 MB by default) is finished on disk, ~2.5x
# slower (100k x 128-d: 191 s vs 72 s on 2 cores). The rebuild raises it for its own
# transaction to the graph's estimated size, up to this cap.
MAX_BUILD_MEMORY_MB = 1024
# pg_advisory_xact_lock key serialising CREATE EXTENSION / CREATE TABLE between processes
# that open the same gallery at the same time (both would otherwise race on the catalog).
_SETUP_LOCK_KEY = 0x6F70656E7265636F
_MISSING_SCORE = float(np.finfo(np.float32).min)  # what FAISS reports for empty result slots
_SPEC_OPTIONS = {"table", "hnsw_m", "ef_construction", "ef_search"}
_SECRET_KEYS = ("password", "sslpassword")  # libpq parameters that hold secrets
_KV_PASSWORD = re.compile(
    r"(?:^|\s)(?:ssl)?password\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S*)", re.IGNORECASE
)


class PgVectorError(ValueError):
    """A PostgreSQL/pgvector problem (unreachable server, bad table, ...); the message says why.

    Messages never contain a password.
    """


# ---------------------------------------------------------------------- DSN and spec helpers
def _split_prefix(dsn: str) -> tuple[str, str]:
    if dsn[: len(SPEC_PREFIX)].lower() == SPEC_PREFIX:
        return dsn[: len(SPEC_PREFIX)], dsn[len(SPEC_PREFIX) :]
    return "", dsn


def _is_uri(dsn: str) -> bool:
    scheme, sep, _ = dsn.partition("://")
    return bool(sep) and scheme.lower() in URI_SCHEMES


def _parse_query(query: str) -> list[tuple[str, str]]:
    # Not urllib's parse_qsl: libpq URIs percent-decode only, a "+" stays a "+".
    pairs = []
    for part in query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def _encode_query(pairs: Sequence[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='/:,')}" for k, v in pairs)


def _secrets_of(dsn: str) -> list[str]:
    _, body = _split_prefix(dsn.strip())
    found = []
    if _is_uri(body):
        parts = urlsplit(body)
        userinfo, at, _ = parts.netloc.rpartition("@")
        if at and ":" in userinfo:
            found.append(unquote(userinfo.split(":", 1)[1]))
        found += [value for key, value in _parse_query(parts.query) if key in _SECRET_KEYS]
    else:
        for match in _KV_PASSWORD.finditer(body):
            value = match.group(0).split("=", 1)[1].strip()
            if value.startswith("'"):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            found.append(value)
    return [secret for secret in found if secret]


def redacted_dsn(dsn: str) -> str:
    """The DSN (or ``pgvector+`` spec) without its password, safe to log or save.

    The password (and ``sslpassword``) is removed, not masked, so the result is still a
    usable DSN: libpq then takes the password from ``PGPASSWORD`` or ``~/.pgpass``. Works on
    URIs (``postgresql://user:pw@host/db``, ``?password=pw``) and on ``key=value`` strings.

    Args:
        dsn: a libpq connection string or URI, optionally prefixed with ``pgvector+``.

    Returns:
        The same connection string with every password removed.
    """
    prefix, body = _split_prefix(dsn.strip())
    if _is_uri(body):
        parts = urlsplit(body)
        netloc = parts.netloc
        userinfo, at, hosts = netloc.rpartition("@")
        if at and ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}@{hosts}" if user else hosts
        query = parts.query
        pairs = _parse_query(query)
        if any(key in _SECRET_KEYS for key, _ in pairs):
            query = _encode_query([(k, v) for k, v in pairs if k not in _SECRET_KEYS])
        return prefix + urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    return prefix + _KV_PASSWORD.sub("", body).strip()


def _scrub(message: object, dsn: str) -> str:
    text = str(message).strip()
    for secret in _secrets_of(dsn):
        for form in (secret, quote(secret, safe="")):
            text = text.replace(form, "***")
    return text


def is_pgvector_spec(spec: object) -> bool:
    """Whether an index spec names the PostgreSQL backend (starts with ``pgvector``).

    Args:
        spec: an index spec such as ``"Flat"`` or ``"pgvector+postgresql://..."``.

    Returns:
        True for specs meant for :func:`pgvector_index_from_spec`; a malformed one
        (``"pgvector://..."``) is also claimed so that it gets a clear error there.
    """
    return isinstance(spec, str) and spec.strip().lower().startswith("pgvector")


def parse_pgvector_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``pgvector+postgresql://...?table=NAME`` into a libpq DSN and index options.

    The query parameters ``table``, ``hnsw_m``, ``ef_construction`` and ``ef_search`` are
    index options and are removed; every other parameter (``host=/socket/dir``,
    ``sslmode=...``) stays in the DSN handed to libpq.

    Args:
        spec: the index spec.

    Returns:
        ``(dsn, options)`` where ``options`` holds keyword arguments of :class:`PgVectorIndex`.

    Raises:
        PgVectorError: the spec is not of the form ``pgvector+postgresql://...``.
    """
    text = spec.strip()
    prefix, body = _split_prefix(text)
    if not prefix or not _is_uri(body):
        raise PgVectorError(
            f"bad pgvector index spec {redacted_dsn(text)!r}: expected {SPEC_FORMAT!r}"
        )
    parts = urlsplit(body)
    options: dict[str, Any] = {}
    kept = []
    for key, value in _parse_query(parts.query):
        if key not in _SPEC_OPTIONS:
            kept.append((key, value))
        elif key == "table":
            options["table"] = value
        else:
            try:
                options[key] = int(value)
            except ValueError:
                raise PgVectorError(
                    f"pgvector spec option {key}={value!r} is not an integer"
                ) from None
    query = _encode_query(kept) if len(kept) != len(_parse_query(parts.query)) else parts.query
    dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
    return dsn, options


def pgvector_index_from_spec(spec: str, dim: int, **kwargs: Any) -> PgVectorIndex:
    """Open (creating if needed) the :class:`PgVectorIndex` an index spec names.

    Args:
        spec: ``pgvector+postgresql://user@host:port/db?table=NAME`` (also ``postgres://``).
        dim: embedding dimension.
        **kwargs: further :class:`PgVectorIndex` arguments; they override the spec's options.

    Returns:
        The connected index.

    Raises:
        PgVectorError: bad spec, unreachable database, or a table that does not fit.
    """
    dsn, options = parse_pgvector_spec(spec)
    options.update(kwargs)
    return PgVectorIndex(dsn, dim, **options)


def pgvector_spec(dsn: str, table: str = DEFAULT_TABLE) -> str:
    """The index spec for ``dsn`` and ``table``, password removed (what a manifest records).

    Args:
        dsn: a ``postgresql://`` URI.
        table: the table name.

    Returns:
        ``pgvector+<dsn without password>?...&table=<table>``.
    """
    parts = urlsplit(redacted_dsn(dsn))
    pairs = [(k, v) for k, v in _parse_query(parts.query) if k != "table"] + [("table", table)]
    return SPEC_PREFIX + urlunsplit(
        (parts.scheme, parts.netloc, parts.path, _encode_query(pairs), parts.fragment)
    )


def canonical_pgvector_spec(spec: str) -> str:
    """The spec as a manifest records it: password removed, ``table`` always explicit.

    Args:
        spec: a ``pgvector+postgresql://...`` index spec.

    Returns:
        An equivalent spec without password, safe to save and show.

    Raises:
        PgVectorError: a malformed spec.
    """
    dsn, options = parse_pgvector_spec(spec)
    parts = urlsplit(redacted_dsn(dsn))
    pairs = _parse_query(parts.query) + [("table", options.pop("table", DEFAULT_TABLE))]
    pairs += [(key, str(value)) for key, value in sorted(options.items())]
    return SPEC_PREFIX + urlunsplit(
        (parts.scheme, parts.netloc, parts.path, _encode_query(pairs), parts.fragment)
    )


def validate_table_name(table: str) -> tuple[str, ...]:
    """Check a table name (``name`` or ``schema.name``, plain identifiers only).

    Args:
        table: the table name.

    Returns:
        Its parts, ready for ``psycopg.sql.Identifier(*parts)``.

    Raises:
        PgVectorError: anything but letters, digits and underscores (not leading digits),
            or longer than 40 characters.
    """
    parts = tuple(table.split(".")) if isinstance(table, str) else ()
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts):
        raise PgVectorError(
            f"bad table name {table!r}: use letters, digits and underscores "
            "(optionally schema.table), not starting with a digit"
        )
    if len(parts[-1]) > MAX_TABLE_NAME:
        raise PgVectorError(f"table name {table!r} longer than {MAX_TABLE_NAME} characters")
    return parts


def _import_driver() -> tuple[Any, Any, Any]:
    try:
        import psycopg
        from pgvector import Vector
        from pgvector.psycopg import register_vector
    except ImportError as exc:
        raise ImportError(
            f"the PostgreSQL gallery backend needs psycopg and pgvector ({exc}): "
            "pip install 'openrecog[pg]'"
        ) from exc
    return psycopg, register_vector, Vector


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text)[:3])


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (N, {dim}), got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinity")
    return vectors


# ---------------------------------------------------------------------- the index
class PgVectorIndex:
    """Inner-product search in a PostgreSQL table with a pgvector HNSW index.

    Implements :class:`openrecog.index.VectorIndex`, plus what a shared gallery needs: ids
    allocated by the database (:meth:`add_items`), labels and sources stored beside the
    vectors. Several processes may use the same table at once; the database is the source
    of truth. One connection per object, guarded by a lock so that server threads can share
    it; a broken connection is reopened on the next call.

    Args:
        dsn: libpq connection string or ``postgresql://`` URI. A password in it is used to
            connect but never shown: :attr:`dsn` and every error message are redacted.
        dim: embedding dimension (at most 2000, pgvector's HNSW limit).
        table: table name, ``name`` or ``schema.name``.
        hnsw_m: HNSW graph degree, used when this object creates the index.
        ef_construction: HNSW build-time candidate list, used when creating the index.
        ef_search: HNSW search-time candidate list (``hnsw.ef_search``); higher is more
            accurate and slower. Raised per query to ``k`` when ``k`` is larger.
        create: create the extension, table and index if missing; with False a missing
            table is an error.

    Raises:
        PgVectorError: unreachable database, pgvector missing and not creatable, a table
            whose columns or dimension do not match, or bad arguments.
        ImportError: psycopg or pgvector is not installed.
    """

    def __init__(
        self,
        dsn: str,
        dim: int,
        table: str = DEFAULT_TABLE,
        *,
        hnsw_m: int = 16,
        ef_construction: int = 64,
        ef_search: int = 100,
        create: bool = True,
    ) -> None:
        self._parts = validate_table_name(table)
        if not 1 <= dim <= MAX_HNSW_DIM:
            raise PgVectorError(f"dimension must be in 1..{MAX_HNSW_DIM} for pgvector, got {dim}")
        if not 2 <= hnsw_m <= 100:
            raise PgVectorError(f"hnsw_m must be in 2..100, got {hnsw_m}")
        if not 2 * hnsw_m <= ef_construction <= 1000:
            raise PgVectorError(
                f"ef_construction must be in {2 * hnsw_m}..1000 (>= 2 * hnsw_m), "
                f"got {ef_construction}"
            )
        if not 1 <= ef_search <= MAX_EF_SEARCH:
            raise PgVectorError(f"ef_search must be in 1..{MAX_EF_SEARCH}, got {ef_search}")
        self.dim = int(dim)
        self.table = table
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.dsn = redacted_dsn(dsn)
        self._dsn = dsn
        self._psycopg, self._register_vector, self._vector_type = _import_driver()
        sql = self._psycopg.sql
        self._table = sql.Identifier(*self._parts)
        self._lock = threading.RLock()
        self._closed = False
        self._sequence: str | None = None
        self._conn = self._connect()
        try:
            self._setup(create)
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ connection
    def _connect(self) -> Any:
        psycopg = self._psycopg
        try:
            params = psycopg.conninfo.conninfo_to_dict(self._dsn)
        except psycopg.Error as exc:
            raise PgVectorError(
                f"invalid PostgreSQL DSN {self.dsn!r}: {_scrub(exc, self._dsn)}"
            ) from None
        extra: dict[str, Any] = {}
        # Without a timeout an unreachable host hangs for minutes (TCP retries).
        if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
            extra["connect_timeout"] = 10
        if "application_name" not in params and not os.environ.get("PGAPPNAME"):
            extra["application_name"] = "openrecog"
        try:
            return psycopg.connect(self._dsn, autocommit=True, **extra)
        except psycopg.Error as exc:
            # `from None`: psycopg's own traceback adds nothing the message does not say.
            raise PgVectorError(
                f"cannot connect to PostgreSQL at {self.dsn!r}: {_scrub(exc, self._dsn)}"
            ) from None

    def _prepare_session(self, conn: Any) -> None:
        self._register_vector(conn)
        conn.execute("SELECT set_config('hnsw.ef_search', %s, false)", (str(self.ef_search),))

    @contextmanager
    def _session(self, action: str) -> Iterator[Any]:
        psycopg = self._psycopg
        with self._lock:
            if self._closed:
                raise PgVectorError(f"{action}: the index on table {self.table} is closed")
            try:
                if self._conn.closed or self._conn.broken:
                    self._conn = self._connect()
                    self._prepare_session(self._conn)
                yield self._conn
            except psycopg.Error as exc:
                raise PgVectorError(
                    f"{action} failed (table {self.table} at {self.dsn}): {_scrub(exc, self._dsn)}"
                ) from exc

    def close(self) -> None:
        """Close the connection; later calls raise :class:`PgVectorError`."""
        with self._lock:
            self._closed = True
            self._conn.close()

    def __enter__(self) -> PgVectorIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PgVectorIndex(dsn={self.dsn!r}, dim={self.dim}, table={self.table!r})"

    # ------------------------------------------------------------------ schema
    def _qualified(self, conn: Any) -> str:
        return self._table.as_string(conn)

    def _setup(self, create: bool) -> None:
        with self._session("opening the table") as conn:
            with conn.transaction():
                self._create_or_check(conn, create)
            self._prepare_session(conn)

    def _create_or_check(self, conn: Any, create: bool) -> None:
        """Inside the caller's transaction: extension, then the table and its indexes."""
        sql = self._psycopg.sql
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK_KEY,))
        self._ensure_extension(conn)
        name = self._qualified(conn)
        exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone()[0]
        if not exists:
            if not create:
                raise PgVectorError(f"table {self.table} does not exist at {self.dsn}")
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {t} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
                    " label text NOT NULL DEFAULT '', source text NOT NULL DEFAULT '',"
                    " embedding vector({dim}) NOT NULL)"
                ).format(t=self._table, dim=sql.SQL(str(self.dim)))
            )
            # classes(), ids_of_label() and remove_label() filter or group by label.
            conn.execute(
                sql.SQL("CREATE INDEX {i} ON {t} (label)").format(
                    i=sql.Identifier(f"{self._parts[-1]}_label"), t=self._table
                )
            )
        else:
            self._check_columns(conn, name)
        if create and not self._hnsw_indexes(conn, name):
            conn.execute(
                sql.SQL(
                    "CREATE INDEX {i} ON {t} USING hnsw (embedding vector_ip_ops)"
                    " WITH (m = {m}, ef_construction = {ef})"
                ).format(
                    i=sql.Identifier(f"{self._parts[-1]}_embedding_hnsw"),
                    t=self._table,
                    m=sql.SQL(str(self.hnsw_m)),
                    ef=sql.SQL(str(self.ef_construction)),
                )
            )
        self._sequence = conn.execute(
            "SELECT pg_get_serial_sequence(%s, 'id')", (name,)
        ).fetchone()[0]

    def _ensure_extension(self, conn: Any) -> None:
        psycopg = self._psycopg
        query = "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        row = conn.execute(query).fetchone()
        if row is None:
            try:
                with conn.transaction():  # a savepoint: a failure must not hide the reason
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except psycopg.Error as exc:
                raise PgVectorError(
                    f"the pgvector extension is not enabled in the database at {self.dsn} and "
                    f"cannot be created ({_scrub(exc, self._dsn)}); install pgvector on the "
                    "server and run CREATE EXTENSION vector as a database owner or superuser"
                ) from None
            row = conn.execute(query).fetchone()
        if _version_tuple(row[0]) < MIN_PGVECTOR_VERSION:
            raise PgVectorError(
                f"pgvector {row[0]} is too old (HNSW needs >= 0.5.0): ALTER EXTENSION vector UPDATE"
            )

    def _check_columns(self, conn: Any, name: str) -> None:
        rows = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), atttypmod FROM pg_attribute"
            " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (name,),
        ).fetchall()
        columns = {row[0]: (row[1], row[2]) for row in rows}
        expected = {"id": "bigint", "label": "text", "source": "text"}
        wrong = [c for c, t in expected.items() if columns.get(c, ("",))[0] != t]
        embedding_type = columns.get("embedding", ("",))[0]
        if wrong or not embedding_type.startswith("vector"):
            raise PgVectorError(
                f"table {self.table} exists but is not an openrecog gallery table (expected "
                "columns id bigint, label text, source text, embedding vector); "
                "choose another table"
            )
        stored_dim = columns["embedding"][1]
        if stored_dim != self.dim:
            raise PgVectorError(
                f"table {self.table} stores {stored_dim}-dimensional embeddings but this "
                f"model produces {self.dim}-dimensional ones: use another table per model"
            )

    def _hnsw_indexes(self, conn: Any, name: str) -> list[tuple[str, str, str]]:
        """``(schema, index name, CREATE INDEX statement)`` of the table's inner-product HNSW."""
        rows = conn.execute(
            "SELECT n.nspname, c.relname, pg_get_indexdef(c.oid) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_am am ON am.oid = c.relam"
            " WHERE i.indrelid = %s::regclass AND am.amname = 'hnsw'",
            (name,),
        ).fetchall()
        # An HNSW index with another operator class (cosine, L2) cannot serve `<#>` ordering.
        return [tuple(row) for row in rows if "vector_ip_ops" in row[2]]

    # ------------------------------------------------------------------ writing
    def _copy_rows(
        self,
        conn: Any,
        ids: np.ndarray,
        vectors: np.ndarray,
        labels: Sequence[str] | None,
        sources: Sequence[str] | None,
    ) -> None:
        """Binary COPY inside the caller's transaction, rebuilding HNSW for big first loads."""
        sql = self._psycopg.sql
        name = self._qualified(conn)
        rebuild: list[tuple[str, str, str]] = []
        if len(ids) >= BULK_REBUILD_ROWS and self._is_empty(conn):
            # Readers wait on the lock for the few seconds of the build instead of seeing a
            # half-loaded table; re-checked under the lock in case another writer came first.
            conn.execute(sql.SQL("LOCK TABLE {t} IN ACCESS EXCLUSIVE MODE").format(t=self._table))
            if self._is_empty(conn):
                rebuild = self._hnsw_indexes(conn, name)
                for schema, index, _ in rebuild:
                    conn.execute(sql.SQL("DROP INDEX {i}").format(i=sql.Identifier(schema, index)))
                self._raise_build_memory(conn, len(ids))
        with_text = labels is not None
        columns = ["id", "label", "source", "embedding"] if with_text else ["id", "embedding"]
        statement = sql.SQL("COPY {t} ({c}) FROM STDIN (FORMAT BINARY)").format(
            t=self._table, c=sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        with conn.cursor() as cur, cur.copy(statement) as copy:
            copy.set_types(["int8", "text", "text", "vector"] if with_text else ["int8", "vector"])
            if with_text:
                for row in zip(ids.tolist(), labels, sources, vectors, strict=True):
                    copy.write_row(row)
            else:
                for row in zip(ids.tolist(), vectors, strict=True):
                    copy.write_row(row)
        for _, _, definition in rebuild:
            conn.execute(definition)

    def _raise_build_memory(self, conn: Any, rows: int) -> None:
        # Per element: the vector, ~3m neighbour slots of 16 bytes, bookkeeping (measured
        # 1.27 kB at 128-d, m=16; this estimates 1.48 kB).
        needed_mb = rows * (4 * self.dim + 48 * self.hnsw_m + 200) // 2**20 + 16
        current_kb = conn.execute(
            "SELECT setting::bigint FROM pg_settings WHERE name = 'maintenance_work_mem'"
        ).fetchone()[0]
        target_mb = min(needed_mb, MAX_BUILD_MEMORY_MB)
        if target_mb * 1024 > current_kb:
            conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", (f"{target_mb}MB",))

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add ``(N, dim)`` float32 vectors under caller-chosen non-negative int64 ids.

        The id sequence is moved past the largest id so that :meth:`add_items` never hands
        it out again. Processes adding at the same time should use :meth:`add_items`.

        Raises:
            ValueError: bad shapes, negative ids.
            PgVectorError: an id already exists, or a database error.
        """
        vectors = _as_matrix(vectors, self.dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        if not len(ids):
            return
        if (ids < 0).any():
            raise ValueError("ids must be non-negative (-1 marks empty result slots)")
        with self._session("adding vectors") as conn, conn.transaction():
            self._copy_rows(conn, ids, vectors, None, None)
            if self._sequence is not None:
                conn.execute(
                    "SELECT setval(%(s)s::regclass, %(m)s)"
                    " WHERE %(m)s > COALESCE(pg_sequence_last_value(%(s)s::regclass), 0)",
                    {"s": self._sequence, "m": int(ids.max())},
                )

    def add_items(
        self,
        vectors: np.ndarray,
        labels: Sequence[str],
        sources: Sequence[str] | None = None,
    ) -> list[int]:
        """Add vectors with labels and sources under ids allocated by the database.

        Ids come from the table's identity sequence, so processes adding at the same time
        never collide, and ids are never reused after removal.

        Args:
            vectors: ``(N, dim)`` float32.
            labels: ``N`` labels.
            sources: ``N`` source names (file paths); empty strings when omitted.

        Returns:
            The new ids, in input order (increasing).

        Raises:
            ValueError: bad shapes or lengths.
            PgVectorError: a database error.
        """
        vectors = _as_matrix(vectors, self.dim)
        labels = [str(label) for label in labels]
        sources = [str(s) for s in sources] if sources is not None else [""] * len(labels)
        if not len(labels) == len(sources) == len(vectors):
            raise ValueError(
                f"{len(vectors)} vectors, {len(labels)} labels and {len(sources)} sources"
            )
        if not len(vectors):
            return []
        with self._session("adding items") as conn, conn.transaction():
            if self._sequence is None:
                raise PgVectorError(f"table {self.table} has no id sequence (identity column)")
            # Sequences are not transactional: an id taken here is never handed out again,
            # even if this transaction rolls back.
            rows = conn.execute(
                "SELECT nextval(%s::regclass) FROM generate_series(1, %s)",
                (self._sequence, len(vectors)),
            ).fetchall()
            ids = np.array([row[0] for row in rows], dtype=np.int64)
            self._copy_rows(conn, ids, vectors, labels, sources)
        return ids.tolist()

    def remove(self, ids: np.ndarray) -> int:
        """Remove by id; unknown ids are ignored. Returns how many were removed."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids):
            return 0
        sql = self._psycopg.sql
        with self._session("removing items") as conn:
            cur = conn.execute(
                sql.SQL("DELETE FROM {t} WHERE id = ANY(%s)").format(t=self._table),
                (ids.tolist(),),
            )
            return cur.rowcount

    def remove_label(self, label: str) -> int:
        """Remove every item of ``label``; returns how many were removed."""
        sql = self._psycopg.sql
        with self._session("removing a class") as conn:
            cur = conn.execute(
                sql.SQL("DELETE FROM {t} WHERE label = %s").format(t=self._table), (label,)
            )
            return cur.rowcount

    def reset(self) -> None:
        """Remove everything (ids keep counting up: they are never reused)."""
        sql = self._psycopg.sql
        with self._session("emptying the table") as conn:
            conn.execute(sql.SQL("TRUNCATE {t}").format(t=self._table))

    # ------------------------------------------------------------------ reading
    def _is_empty(self, conn: Any) -> bool:
        sql = self._psycopg.sql
        query = sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {t})").format(t=self._table)
        return bool(conn.execute(query).fetchone()[0])

    def is_empty(self) -> bool:
        """Whether the table holds no item (cheaper than ``len() == 0`` on big tables)."""
        with self._session("counting items") as conn:
            return self._is_empty(conn)

    def __len__(self) -> int:
        sql = self._psycopg.sql
        with self._session("counting items") as conn:
            query = sql.SQL("SELECT count(*) FROM {t}").format(t=self._table)
            return int(conn.execute(query).fetchone()[0])

    def disk_bytes(self) -> int:
        """Bytes the table, its TOAST data and its indexes (HNSW included) take on disk."""
        with self._session("measuring the table") as conn:
            query = "SELECT pg_total_relation_size(%s::regclass)"
            return int(conn.execute(query, (self._table.as_string(conn),)).fetchone()[0])

    def search_items(self, queries: np.ndarray, k: int) -> list[list[tuple[int, float, str]]]:
        """Top-``k`` ``(id, score, label)`` per query, best first, in one round trip.

        All queries go in one statement (``unnest`` + ``LATERAL``), each served by the HNSW
        index: as fast as a psycopg pipeline and one network round trip. Fewer than ``k``
        hits when the table is smaller.

        Args:
            queries: ``(Q, dim)`` float32 L2-normalised embeddings.
            k: hits per query (>= 1). Above ``ef_search`` the search list is raised to
                ``k``; above 1000 (pgvector's limit) the search is exact (no index).

        Returns:
            ``Q`` lists of ``(id, inner product, label)``.
        """
        queries = _as_matrix(queries, self.dim)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not len(queries):
            return []
        sql = self._psycopg.sql
        nearest = (
            "SELECT id, label, -(embedding <#> {v}) AS score FROM {t} ORDER BY embedding <#> {v}"
            " LIMIT %(k)s"
        )
        if len(queries) == 1:
            # The batch form costs ~0.4 ms more (unnest, sort), a third of a one-query search.
            statement = sql.SQL(
                "SELECT 1, r.id, r.score, r.label FROM (" + nearest + ") AS r"
                " ORDER BY r.score DESC, r.id"
            ).format(t=self._table, v=sql.SQL("%(query)s"))
            params = {"query": self._vector_type(queries[0]), "k": int(k)}
        else:
            statement = sql.SQL(
                "SELECT q.ord, r.id, r.score, r.label"
                " FROM unnest(%(queries)s::vector[]) WITH ORDINALITY AS q(v, ord)"
                " CROSS JOIN LATERAL (" + nearest + ") AS r ORDER BY q.ord, r.score DESC, r.id"
            ).format(t=self._table, v=sql.SQL("q.v"))
            params = {"queries": [self._vector_type(q) for q in queries], "k": int(k)}
        with self._session("searching") as conn:
            if k <= self.ef_search:
                rows = conn.execute(statement, params).fetchall()
            else:
                # HNSW returns at most ef_search rows per scan; SET LOCAL keeps the change
                # to this transaction so the session default stays as configured.
                with conn.transaction():
                    ef = str(min(k, MAX_EF_SEARCH))
                    conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (ef,))
                    if k > MAX_EF_SEARCH:
                        conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
                    rows = conn.execute(statement, params).fetchall()
        hits: list[list[tuple[int, float, str]]] = [[] for _ in range(len(queries))]
        for ordinal, item_id, score, label in rows:
            hits[ordinal - 1].append((int(item_id), float(score), label))
        return hits

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)``, each ``(Q, k)``; missing slots have id -1.

        Scores are inner products (cosine for normalised vectors), as float32.
        """
        hits = self.search_items(queries, k)
        scores = np.full((len(hits), k), _MISSING_SCORE, dtype=np.float32)
        ids = np.full((len(hits), k), -1, dtype=np.int64)
        for row, row_hits in enumerate(hits):
            for col, (item_id, score, _) in enumerate(row_hits):
                scores[row, col], ids[row, col] = score, item_id
        return scores, ids

    def labels_for(self, ids: Sequence[int]) -> dict[int, tuple[str, str]]:
        """``{id: (label, source)}`` for those of ``ids`` that exist."""
        sql = self._psycopg.sql
        with self._session("reading labels") as conn:
            rows = conn.execute(
                sql.SQL("SELECT id, label, source FROM {t} WHERE id = ANY(%s)").format(
                    t=self._table
                ),
                ([int(i) for i in ids],),
            ).fetchall()
        return {int(i): (label, source) for i, label, source in rows}

    def items(self) -> list[tuple[int, str, str]]:
        """Every ``(id, label, source)``, by increasing id."""
        sql = self._psycopg.sql
        with self._session("listing items") as conn:
            query = sql.SQL("SELECT id, label, source FROM {t} ORDER BY id").format(t=self._table)
            return [(int(i), label, source) for i, label, source in conn.execute(query)]

    def classes(self) -> dict[str, int]:
        """``{label: item count}``, sorted by label (code-point order, like Python)."""
        sql = self._psycopg.sql
        with self._session("listing classes") as conn:
            query = sql.SQL(
                'SELECT label, count(*) FROM {t} GROUP BY label ORDER BY label COLLATE "C"'
            ).format(t=self._table)
            return {label: int(n) for label, n in conn.execute(query)}

    def ids_of_label(self, label: str) -> list[int]:
        """Ids of the items of ``label``, increasing."""
        sql = self._psycopg.sql
        with self._session("listing a class") as conn:
            query = sql.SQL("SELECT id FROM {t} WHERE label = %s ORDER BY id").format(t=self._table)
            return [int(row[0]) for row in conn.execute(query, (label,))]

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``ids``, ``(len(ids), dim)`` float32 in the order given.

        Raises:
            KeyError: some ids do not exist.
        """
        wanted = [int(i) for i in ids]
        sql = self._psycopg.sql
        with self._session("reading vectors") as conn:
            query = sql.SQL("SELECT id, embedding FROM {t} WHERE id = ANY(%s)").format(
                t=self._table
            )
            found = {int(i): v.to_numpy() for i, v in conn.execute(query, (wanted,), binary=True)}
        missing = [i for i in wanted if i not in found]
        if missing:
            raise KeyError(f"no items with ids {missing[:10]}")
        out = np.zeros((len(wanted), self.dim), dtype=np.float32)
        for row, item_id in enumerate(wanted):
            out[row] = found[item_id]
        return out
