"""The node's data dir: where its files live, its identity key, the one-daemon lock and ``api.json``.

Layout (docs/design.md, Data dir): ``config.toml``, ``identity.key`` (mode 0600), ``node.lock``, ``api.json`` (written
atomically at start, removed at stop), ``node.db``, ``blobs/`` and, when the path is short enough,
``control.sock``. (Logs go to the daemon's stderr; there is no ``logs/``.)

Every failure here is a :class:`~overlay_node.errors.DataDirError` whose message says what to do.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlay_node.errors import DataDirError

logger = logging.getLogger(__name__)

ENV_DATA_DIR = "OVERLAY_NODE_DATA_DIR"
DEFAULT_DIR_NAME = ".overlay-node"

#: order of the secp256k1 group; a private key is a scalar k with 0 < k < n
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

#: a unix socket path holds 104-108 bytes depending on the OS; stay well below both
MAX_SOCKET_PATH = 100
#: a temp dir longer than this is not used for the fallback socket dir (``/tmp`` is used instead)
_MAX_RUNTIME_BASE = 40
#: identity.key is 65 bytes; anything far larger is not ours
_MAX_IDENTITY_FILE = 4096
#: api.json holds a few addresses; refuse to parse something absurd
_MAX_API_FILE = 1024 * 1024


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """The data dir to use when no ``--data-dir`` is given.

    Args:
        env: environment variables (defaults to ``os.environ``).

    Returns:
        ``$OVERLAY_NODE_DATA_DIR`` when set and non-empty, else ``~/.overlay-node``.
    """
    source = os.environ if env is None else env
    configured = source.get(ENV_DATA_DIR, "")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / DEFAULT_DIR_NAME


@dataclass(frozen=True, slots=True, kw_only=True)
class InitResult:
    """What :meth:`DataDir.init` did.

    ``created`` is true when this call generated the identity key (a new node); ``config_created`` when it wrote
    ``config.toml``. An existing identity or config is never touched.
    """

    created: bool
    config_created: bool
    path: Path
    identity_path: Path
    config_path: Path


class DataDir:
    """One node's data dir. Constructing it touches nothing on disk; :meth:`init` creates it.

    Args:
        path: the directory; ``~`` is expanded and the path made absolute (it is recorded in ``api.json``).
    """

    def __init__(self, path: Path) -> None:
        self._path = Path(path).expanduser().absolute()

    def __repr__(self) -> str:
        return f"DataDir({str(self._path)!r})"

    @property
    def path(self) -> Path:
        return self._path

    @property
    def config_path(self) -> Path:
        return self._path / "config.toml"

    @property
    def identity_path(self) -> Path:
        return self._path / "identity.key"

    @property
    def lock_path(self) -> Path:
        return self._path / "node.lock"

    @property
    def api_path(self) -> Path:
        return self._path / "api.json"

    @property
    def db_path(self) -> Path:
        return self._path / "node.db"

    @property
    def blobs_dir(self) -> Path:
        return self._path / "blobs"

    # -- init and identity ------------------------------------------------------------------------------------

    def init(self, *, config_text: str) -> InitResult:
        """Create the data dir (mode 0700), ``blobs/``, a new identity key and ``config.toml``.

        Idempotent: an existing identity key or config file is kept as it is, so running ``init`` twice never
        changes a node's identity. A data dir whose node has run (``node.db`` is there) but whose identity key is
        gone is refused: a new identity would silently orphan the wallet's coins, derived from the old one.

        Args:
            config_text: the contents for ``config.toml`` when it does not exist yet.

        Raises:
            DataDirError: a path cannot be created or written (permissions, a file in the way, disk full), or
                ``identity.key`` is missing beside an existing ``node.db``.
        """
        if not self.identity_path.exists() and self.db_path.exists():
            raise self._identity_lost()
        try:
            created_dir = _mkdir_private(self._path)
            self.blobs_dir.mkdir(mode=0o700, exist_ok=True)
            identity_created = _create_exclusive(self.identity_path, _new_identity_text().encode("ascii"), 0o600)
            config_created = _create_exclusive(self.config_path, config_text.encode("utf-8"), 0o600)
            if created_dir or identity_created or config_created:
                _fsync_dir(self._path)
        except OSError as exc:
            raise DataDirError(f"cannot initialise data dir {self._path}: {exc.strerror or exc}") from exc
        if identity_created:
            logger.info("created a new identity in %s", self._path)
        return InitResult(
            created=identity_created,
            config_created=config_created,
            path=self._path,
            identity_path=self.identity_path,
            config_path=self.config_path,
        )

    def load_identity(self) -> bytes:
        """Read the node's private key.

        Returns:
            The 32 raw bytes of the secp256k1 private key.

        Raises:
            DataDirError: the key is missing (and, when ``node.db`` is there, must be restored rather than made
                anew), unreadable, malformed, not a valid secp256k1 scalar, or readable or writable by group or
                others.
        """
        path = self.identity_path
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            if self.db_path.exists():
                raise self._identity_lost() from None
            raise DataDirError(
                f"no identity in {self._path}: run `overlay-node --data-dir {self._path} init`"
            ) from None
        except OSError as exc:
            raise DataDirError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise DataDirError(f"{path} is not a regular file")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                what = "readable" if mode & 0o044 else "writable"
                raise DataDirError(
                    f"identity.key in {self._path} is {what} by others (mode {mode:04o}): chmod 600 {path}"
                )
            raw = os.read(fd, _MAX_IDENTITY_FILE + 1)
        except OSError as exc:
            raise DataDirError(f"cannot read {path}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)
        return _parse_identity(raw, path)

    def _identity_lost(self) -> DataDirError:
        return DataDirError(
            f"identity.key is missing from {self._path} but node.db is there (this node has run, and its wallet's "
            f"coins belong to that identity): restore identity.key from a backup, or move the data dir aside "
            f"(mv {self._path} {self._path}.old) to start a new node"
        )

    # -- the one-daemon lock ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the data dir's lock for as long as the block runs: one daemon per data dir.

        Takes an exclusive, non-blocking ``flock`` on ``node.lock`` and writes our pid into it (for the message
        another daemon gets). The lock dies with the process, so a crash (even ``kill -9``) never leaves a stale
        lock, only a harmless file. An orderly exit removes ``node.lock`` while still holding it; a daemon that
        opened the file just before that and then got the lock finds its file no longer at the path, and opens it
        anew. Two ``lock()`` calls in one process conflict too, since flock belongs to the open file.

        Raises:
            DataDirError: the dir does not exist, or another daemon holds the lock.
        """
        if not self._path.is_dir():
            raise DataDirError(f"no data dir at {self._path}: run `overlay-node --data-dir {self._path} init`")
        fd = self._take_lock()
        try:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            except OSError as exc:
                raise DataDirError(f"cannot write {self.lock_path}: {exc.strerror or exc}") from exc
            try:
                yield
            finally:
                # Remove the file before letting go (see above), so nobody reads a pid that no longer holds it.
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                with contextlib.suppress(OSError):
                    self.lock_path.unlink()
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _take_lock(self) -> int:
        """Open ``node.lock`` and flock it; return the fd, locked, of the file that is at the path now."""
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
            except OSError as exc:
                raise DataDirError(f"cannot open {self.lock_path}: {exc.strerror or exc}") from exc
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise DataDirError(f"cannot lock {self.lock_path}: {exc.strerror or exc}") from exc
                    pid = _read_pid(fd)
                    who = f"another daemon (pid {pid})" if pid is not None else "another daemon"
                    raise DataDirError(f"{who} is running on {self._path}") from None
                if _is_at(fd, self.lock_path):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # removed by the daemon that held it as it stopped: take the new file instead

    # -- control socket ---------------------------------------------------------------------------------------

    def control_socket_path(self, configured: str = "") -> Path:
        """Where the control API's unix socket goes.

        Args:
            configured: ``control.socket`` from the config; used as is when non-empty.

        Returns:
            ``configured`` if given; else ``<dir>/control.sock`` when that fits in a socket address
            (:data:`MAX_SOCKET_PATH` bytes); else ``control.sock`` in a short private runtime dir (mode 0700,
            ``<tmp>/overlay-node-<uid>/<hash of the data dir>/``), created here. The daemon records the chosen
            path in ``api.json``.

        Raises:
            DataDirError: the configured path is too long, or the runtime dir cannot be made private.
        """
        if configured:
            chosen = Path(configured).expanduser().absolute()
            if len(os.fsencode(chosen)) > MAX_SOCKET_PATH:
                raise DataDirError(
                    f"control.socket {chosen} is longer than {MAX_SOCKET_PATH} bytes: choose a shorter path"
                )
            return chosen
        in_dir = self._path / "control.sock"
        if len(os.fsencode(in_dir)) <= MAX_SOCKET_PATH:
            return in_dir
        base = Path(tempfile.gettempdir())
        if len(os.fsencode(base)) > _MAX_RUNTIME_BASE:
            base = Path("/tmp")
        digest = hashlib.sha256(os.fsencode(os.path.realpath(self._path))).hexdigest()[:16]
        root = base / f"overlay-node-{os.getuid()}"
        runtime = root / digest
        try:
            _ensure_private_dir(root)
            _ensure_private_dir(runtime)
        except OSError as exc:
            raise DataDirError(
                f"cannot create the runtime dir {runtime}: {exc.strerror or exc}; set control.socket"
            ) from exc
        return runtime / "control.sock"

    # -- api.json ---------------------------------------------------------------------------------------------

    def write_api(self, info: Mapping[str, Any]) -> None:
        """Write ``api.json`` atomically: a temp file in the same dir, fsync, ``os.replace``, fsync the dir.

        A reader sees either the previous file or the whole new one, never a partial write.

        Raises:
            DataDirError: ``info`` is not JSON-serialisable, or the file cannot be written.
        """
        try:
            data = (json.dumps(dict(info), indent=2, sort_keys=True) + "\n").encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise DataDirError(f"api.json: cannot encode {info!r}: {exc}") from exc
        try:
            _atomic_write(self.api_path, data)
        except OSError as exc:
            raise DataDirError(f"cannot write {self.api_path}: {exc.strerror or exc}") from exc

    def read_api(self) -> dict[str, Any] | None:
        """Read ``api.json``.

        Returns:
            Its JSON object, or ``None`` when there is no file (no daemon running).

        Raises:
            DataDirError: the file is unreadable, too large, not JSON or not a JSON object.
        """
        try:
            with self.api_path.open("rb") as f:
                raw = f.read(_MAX_API_FILE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DataDirError(f"cannot read {self.api_path}: {exc.strerror or exc}") from exc
        if len(raw) > _MAX_API_FILE:
            raise DataDirError(f"{self.api_path} is larger than {_MAX_API_FILE} bytes: remove it")
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataDirError(f"{self.api_path} is corrupt ({exc}): remove it if no daemon runs") from exc
        if not isinstance(value, dict):
            raise DataDirError(f"{self.api_path} is corrupt (not a JSON object): remove it if no daemon runs")
        return value

    def remove_api(self) -> None:
        """Remove ``api.json``; no error when it is already gone.

        Raises:
            DataDirError: the file exists but cannot be removed.
        """
        try:
            self.api_path.unlink(missing_ok=True)
        except OSError as exc:
            raise DataDirError(f"cannot remove {self.api_path}: {exc.strerror or exc}") from exc


# -- helpers -----------------------------------------------------------------------------------------------------


def _new_identity_text() -> str:
    while True:
        raw = secrets.token_bytes(32)
        # Rejection sampling: the chance of leaving [1, n) is about 2**-128, but the rule is cheap to keep.
        if 0 < int.from_bytes(raw, "big") < SECP256K1_N:
            return raw.hex() + "\n"


def _parse_identity(raw: bytes, path: Path) -> bytes:
    fix = f"restore it from a backup or move it away and run `overlay-node --data-dir {path.parent} init`"
    if len(raw) > _MAX_IDENTITY_FILE:
        raise DataDirError(f"{path} is malformed (too large): {fix}")
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise DataDirError(f"{path} is malformed (not hex text): {fix}") from None
    if len(text) != 64:
        raise DataDirError(f"{path} is malformed (expected 64 hex characters, got {len(text)}): {fix}")
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise DataDirError(f"{path} is malformed (not hex): {fix}") from None
    if not 0 < int.from_bytes(key, "big") < SECP256K1_N:
        raise DataDirError(f"{path} is not a valid secp256k1 private key: {fix}")
    return key


def _mkdir_private(path: Path) -> bool:
    """Create ``path`` (and parents) with mode 0700; return whether the leaf was created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise
        return False
    os.chmod(path, 0o700)  # mkdir's mode is filtered through the umask
    return True


def _ensure_private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700, or check that the existing one is a real dir owned by us (and tighten it).

    The runtime dirs sit in a shared /tmp, so a dir someone else made (or a symlink) must not be trusted.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise DataDirError(f"{path} is not a directory owned by you: remove it or set control.socket")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _create_exclusive(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` with ``data`` unless it exists; return whether we created it.

    The data goes to a temp file first and is linked into place, so a crash never leaves a half-written file,
    and a file that appeared meanwhile is never overwritten.
    """
    if path.exists():
        return False
    tmp = _write_temp(path, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    return True


def _atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = _write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _write_temp(path: Path, data: bytes, mode: int) -> str:
    """Write ``data`` to a fresh temp file next to ``path``, fsynced, and return its name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is the file at ``path`` (not one removed or replaced since it was opened)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (own.st_dev, own.st_ino) == (st.st_dev, st.st_ino)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
