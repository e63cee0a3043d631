"""Who may use the dashboard and what each role may change: users, roles, permissions, password hashing.

The rules, in one place (the dashboard's login gate ``ui/auth.py`` and the CLI's ``users`` command use them):

* **Where the dashboard listens decides whether it needs a login** (:func:`access_mode`). On a loopback address
  with no users file and no identity provider, there is no login and the local user is an engineer (as before).
  Once a users file (or an OIDC provider) is configured, everybody signs in, whatever the address. On any other
  address (``0.0.0.0``, a LAN address, a host name, or no address, which means every interface) with neither,
  the dashboard refuses to serve pages: an open dashboard on the network could train, mark OK (which changes the
  model), switch versions and write masks into the data roots.
* **Roles** (:data:`ROLE_PERMISSIONS`): an *operator* inspects, reviews and marks (Mark as OK, Mark as defect,
  undo); an *engineer* may also train, evaluate, save thresholds, switch versions, annotate, build the similarity
  index and export. Every write action calls :func:`authorize` where it is executed; hiding a button is only
  the courtesy on top.
* **Passwords** are hashed with Argon2id (``argon2-cffi``, its default RFC 9106 parameters), verified in constant
  time by the library; an unknown name is verified against a dummy hash, so the answer takes as long either way.
  At most :data:`MAX_CONCURRENT_HASHES` verifications run at once (64 MiB each). Failed attempts slow down and
  then lock the name out for a while; too many failures across all names within a minute pause every sign-in
  (:class:`LoginThrottle`, whose memory has a hard cap). No password, hash or attempt is ever logged; only names.
* **The users file** is changed only under an exclusive lock (``.users.json.lock`` beside it), re-read under that
  lock: two ``users add`` at once lose nobody, and a sign-in's hash upgrade cannot write back a removed user.

The users file (``INSPECT_USERS_FILE``, default ``<model store>/users.json``, see ``core/settings.py``)::

    {"version": 1, "users": {"alice": {"role": "operator", "password": "$argon2id$...", "email": null}}}

A user with an ``email`` is matched to an OIDC sign-in (``st.login``) by that address; a user without a password
can only sign in through the identity provider. Add users with ``python -m core users add NAME --role ROLE``.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from core.files import atomic_write_bytes, locked

log = logging.getLogger(__name__)

USERS_FILE_VERSION = 1
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # longer input is refused before hashing (hashing megabytes is a denial of service)
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@")
_HASHER = PasswordHasher()  # Argon2id, RFC 9106 low-memory profile (64 MiB, t=3, p=4)
MAX_CONCURRENT_HASHES = 2  # each Argon2 verification or hash allocates 64 MiB: a burst of sign-ins queues here
HASH_WAIT_S = 30.0  # a sign-in that waits longer for a slot is answered "busy" (and counts as no failure)
_HASH_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_HASHES)


@functools.cache
def _dummy_hash() -> str:
    """What an unknown name is verified against, so the answer takes as long as for a known one (made once)."""
    return _HASHER.hash("no user has this password: it only makes an unknown name cost a verification")


class Role(StrEnum):
    """A user's role: what they may change."""

    OPERATOR = "operator"
    ENGINEER = "engineer"


class Permission(StrEnum):
    """One kind of action. Every action that writes to the store or the data roots needs one."""

    INSPECT = "inspect"  # view pages, score images, download results (writes nothing)
    MARK = "mark"  # Mark as OK (a new model version), Mark as defect (files the image), undo
    TRAIN = "train"  # train or resume a model
    EVALUATE = "evaluate"  # score the test images and save the evaluation beside the model
    THRESHOLDS = "thresholds"  # save thresholds (a new model version)
    VERSIONS = "versions"  # make another version current
    ANNOTATE = "annotate"  # save a drawn mask (and its image) into a data root
    INDEX = "index"  # build the similarity index
    EXPORT = "export"  # write an export bundle


_OPERATOR = frozenset({Permission.INSPECT, Permission.MARK})
ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.OPERATOR: _OPERATOR,
    Role.ENGINEER: frozenset(Permission),
}
ACTION_TEXT: Mapping[Permission, str] = {
    Permission.INSPECT: "view the dashboard", Permission.MARK: "mark images (OK, defect, undo)",
    Permission.TRAIN: "train models", Permission.EVALUATE: "run evaluations",
    Permission.THRESHOLDS: "save thresholds", Permission.VERSIONS: "switch model versions",
    Permission.ANNOTATE: "save annotations", Permission.INDEX: "build the similarity index",
    Permission.EXPORT: "export bundles",
}


class AccessError(Exception):
    """Base class of this module's errors."""


class AccessDenied(AccessError, PermissionError):
    """The signed-in user's role does not allow the action (or nobody is signed in)."""


class UsersFileError(AccessError):
    """The users file cannot be read or does not hold what it should."""


@dataclass(frozen=True)
class User:
    """A signed-in user. ``source``: ``local`` (loopback, no login), ``password`` or ``oidc``."""

    name: str
    role: Role
    source: str = "password"
    email: str | None = None

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS[self.role]


LOCAL_ENGINEER = User(name="local user", role=Role.ENGINEER, source="local")


def authorize(user: User | None, permission: Permission) -> User:
    """The user, when their role allows ``permission``; else :class:`AccessDenied` saying who, what and which role
    would be needed. Call it where the write action is executed, not only where its button is drawn."""
    if user is None:
        raise AccessDenied(f"expected a signed-in user to {ACTION_TEXT[permission]}, found nobody signed in")
    if not user.can(permission):
        needed = ", ".join(sorted(r.value for r, perms in ROLE_PERMISSIONS.items() if permission in perms))
        raise AccessDenied(f"{user.name} is signed in as {user.role.value}, which may not {ACTION_TEXT[permission]} "
                           f"(needs the role {needed})")
    return user


def can(user: User | None, permission: Permission) -> bool:
    """Whether ``user`` may do ``permission`` (False for nobody): for hiding or disabling buttons."""
    return user is not None and user.can(permission)


# --- where the dashboard listens ---------------------------------------------------------------------------------

class AccessMode(StrEnum):
    """How the dashboard treats a visitor."""

    OPEN = "open"  # loopback, nothing configured: no login, the local user is an engineer
    LOGIN = "login"  # users file or identity provider configured: everybody signs in
    REFUSED = "refused"  # exposed beyond this machine with nothing configured: no pages served


def is_loopback(address: str | None) -> bool:
    """Whether a server bind address reaches only this machine. No address (Streamlit's default) binds every
    interface, so it is not loopback; a host name other than ``localhost`` is not resolved and counts as exposed."""
    value = (address or "").strip().strip("[]")
    if not value:
        return False
    if value.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(value).is_loopback
    except ValueError:
        return False


def access_mode(server_address: str | None, users_configured: bool, oidc_configured: bool) -> AccessMode:
    """See the module docstring: configured login wins; else loopback is open and anything else refused."""
    if users_configured or oidc_configured:
        return AccessMode.LOGIN
    return AccessMode.OPEN if is_loopback(server_address) else AccessMode.REFUSED


# --- the users file ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UserRecord:
    """One line of the users file. ``password_hash`` is an Argon2 hash, or None (identity-provider sign-in only)."""

    name: str
    role: Role
    password_hash: str | None = None
    email: str | None = None

    def user(self, source: str) -> User:
        return User(name=self.name, role=self.role, source=source, email=self.email)


def validate_user_name(name: str) -> str:
    """A user name: 1-64 letters, digits and ``._-@``."""
    if not (1 <= len(name) <= 64) or not set(name) <= _NAME_CHARS:
        raise UsersFileError(f"expected a user name of 1-64 letters, digits, '.', '_', '-' or '@', found {name!r}")
    return name


def _role(value: object, where: str) -> Role:
    try:
        return Role(str(value))
    except ValueError:
        raise UsersFileError(f"{where}: expected role {' or '.join(r.value for r in Role)}, found {value!r}") from None


def read_users(path: Path) -> dict[str, UserRecord]:
    """The users in ``path`` by name ({} when the file does not exist). A damaged file raises
    :class:`UsersFileError` naming what is wrong: the dashboard then refuses every login rather than guess."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsersFileError(f"{path}: cannot read the users file ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsersFileError(f"{path}: expected JSON, found an error at line {exc.lineno}: {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("users"), dict):
        raise UsersFileError(f"{path}: expected an object with a 'users' object, found {type(data).__name__}")
    users: dict[str, UserRecord] = {}
    for name, entry in data["users"].items():
        where = f"{path}: user {name!r}"
        if not isinstance(entry, dict):
            raise UsersFileError(f"{where}: expected an object, found {type(entry).__name__}")
        validate_user_name(str(name))
        password, email = entry.get("password"), entry.get("email")
        if password is not None and not (isinstance(password, str) and password.startswith("$argon2")):
            raise UsersFileError(f"{where}: expected an Argon2 password hash or null, found something else")
        if email is not None and not (isinstance(email, str) and "@" in email):
            raise UsersFileError(f"{where}: expected an email address or null, found {email!r}")
        users[name] = UserRecord(name=name, role=_role(entry.get("role"), where), password_hash=password,
                                 email=email.strip().lower() if email else None)
    return users


def write_users(path: Path, users: Mapping[str, UserRecord]) -> Path:
    """Write the users file atomically and durably, readable by its owner only (it holds password hashes): the
    temp file is 0o600 before it is renamed into place. To change the file, use :func:`users_lock` around the
    read and this write (:func:`add_user` and :func:`remove_user` do)."""
    data = {"version": USERS_FILE_VERSION,
            "users": {u.name: {"role": u.role.value, "password": u.password_hash, "email": u.email}
                      for u in sorted(users.values(), key=lambda u: u.name)}}
    return atomic_write_bytes(Path(path), json.dumps(data, indent=2).encode(), mode=0o600)


def users_lock(path: Path) -> contextlib.AbstractContextManager[None]:
    """An exclusive lock on the users file (:func:`core.files.locked`: ``flock`` of ``.<name>.lock`` beside it,
    owner-only), across processes and threads, held for one read-modify-write: read the users inside it, not
    before."""
    return locked(Path(path), mode=0o600)


def hash_password(password: str) -> str:
    """An Argon2id hash of ``password`` (at least :data:`MIN_PASSWORD_LENGTH` characters)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UsersFileError(f"expected a password of at least {MIN_PASSWORD_LENGTH} characters, "
                             f"found {len(password)}")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UsersFileError(f"expected a password of at most {MAX_PASSWORD_LENGTH} characters, "
                             f"found {len(password)}")
    return _HASHER.hash(password)


def add_user(path: Path, name: str, role: Role | str, password: str | None, email: str | None = None,
             replace: bool = False) -> UserRecord:
    """Add (or with ``replace`` overwrite) a user in the users file. ``password`` None: identity-provider sign-in
    only, which needs ``email``. The password is hashed first; the file is then read and written under
    :func:`users_lock`."""
    validate_user_name(name)
    if password is None and not email:
        raise UsersFileError(f"expected a password or an email address (for the identity provider) for {name!r}, "
                             "found neither")
    if email is not None and "@" not in email:
        raise UsersFileError(f"expected an email address, found {email!r}")
    record = UserRecord(name=name, role=_role(role, f"user {name!r}"),
                        password_hash=None if password is None else hash_password(password),
                        email=email.strip().lower() if email else None)
    with users_lock(path):
        users = read_users(path)
        if name in users and not replace:
            raise UsersFileError(f"{path}: user {name!r} exists already (use --replace to change it)")
        write_users(path, {**users, name: record})
    log.info("users file %s: %s %r (role %s)", path, "replaced" if name in users else "added", name, record.role)
    return record


def remove_user(path: Path, name: str) -> None:
    """Remove a user from the users file (read and written under :func:`users_lock`)."""
    with users_lock(path):
        users = read_users(path)
        if name not in users:
            raise UsersFileError(f"{path}: expected a user named {name!r}, found "
                                 f"{', '.join(sorted(users)) or 'none'}")
        del users[name]
        write_users(path, users)
    log.info("users file %s: removed %r", path, name)


def user_for_email(users: Mapping[str, UserRecord], email: str | None) -> UserRecord | None:
    """The user whose email matches an identity provider's sign-in (case-insensitive), if any."""
    wanted = (email or "").strip().lower()
    return next((u for u in users.values() if wanted and u.email == wanted), None) if wanted else None


# --- signing in --------------------------------------------------------------------------------------------------

@dataclass
class LoginThrottle:
    """Failed sign-ins: each failure is answered after ``delay_s``; ``max_failures`` failures of one name within
    ``window_s`` lock that name for ``lockout_s`` (the right password is refused too until then), and
    ``max_global_failures`` failures of any names within ``global_window_s`` pause every sign-in until the oldest
    of them is that old (made-up names cannot try passwords faster than that). Memory has a hard cap whatever the
    clock does: at most ``max_tracked`` names in the failure table and in the lockout table each, the least
    recently failed forgotten first. Per process: the dashboard is one server process. ``clock`` and ``sleep`` are
    injectable for tests."""

    max_failures: int = 5
    window_s: float = 900.0
    lockout_s: float = 300.0
    delay_s: float = 1.0
    max_tracked: int = 10_000  # names remembered per table; the oldest is dropped beyond it
    max_global_failures: int = 100
    global_window_s: float = 60.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    _failures: OrderedDict[str, list[float]] = field(default_factory=OrderedDict)  # oldest failure first
    _locked_until: OrderedDict[str, float] = field(default_factory=OrderedDict)  # soonest expiry first
    _recent: deque[float] = field(init=False)  # the times of the last max_global_failures failures, any name
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.max_tracked < 1 or self.max_global_failures < 1:
            raise ValueError(f"expected max_tracked and max_global_failures >= 1, found {self.max_tracked} and "
                             f"{self.max_global_failures}")
        self._recent = deque(maxlen=self.max_global_failures)

    @staticmethod
    def _key(name: str) -> str:
        return name.strip().lower()[:128]

    def locked_for(self, name: str) -> float:
        """Seconds until ``name`` may try again (0 when it may now)."""
        key = self._key(name)
        with self._lock:
            wait = self._locked_until.get(key, 0.0) - self.clock()
            if key in self._locked_until and wait <= 0:
                del self._locked_until[key]
            return max(0.0, wait)

    def paused_for(self) -> float:
        """Seconds until anybody may try again after too many failures across all names (0 when they may now)."""
        with self._lock:
            if len(self._recent) < self.max_global_failures:
                return 0.0
            return max(0.0, self._recent[0] + self.global_window_s - self.clock())

    def failed(self, name: str) -> None:
        """Count a failure (then wait ``delay_s``, outside the lock)."""
        key, now = self._key(name), self.clock()
        with self._lock:
            self._recent.append(now)
            recent = [t for t in self._failures.pop(key, []) if now - t < self.window_s] + [now]
            if len(recent) >= self.max_failures:
                self._locked_until.pop(key, None)
                self._locked_until[key] = now + self.lockout_s
                while len(self._locked_until) > self.max_tracked:
                    self._locked_until.popitem(last=False)
                log.warning("sign-in for %r locked for %.0f s after %d failed attempts", key, self.lockout_s,
                            len(recent))
            else:
                self._failures[key] = recent  # (re)inserted last: the most recently failed
                while len(self._failures) > self.max_tracked:
                    self._failures.popitem(last=False)
        self.sleep(self.delay_s)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(self._key(name), None)


@dataclass(frozen=True)
class LoginResult:
    """The outcome of one sign-in attempt: the user, or the message to show (never says which part was wrong)."""

    user: User | None
    message: str = ""


BUSY_MESSAGE = "The dashboard is busy checking other sign-ins: try again in a few seconds."


def _verify(digest: str, password: str) -> bool | None:
    """Whether ``password`` matches ``digest``, in one of the :data:`MAX_CONCURRENT_HASHES` slots; None when no
    slot came free within :data:`HASH_WAIT_S`."""
    if not _HASH_SLOTS.acquire(timeout=HASH_WAIT_S):
        return None
    try:
        return bool(_HASHER.verify(digest, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
    finally:
        _HASH_SLOTS.release()


def _upgrade_hash(path: Path, record: UserRecord, password: str) -> None:
    """Rehash ``record``'s password with the current parameters and write it, under :func:`users_lock`, into the
    users file as it is now: only when the user is still there with the hash that was verified (a user removed
    or given a new password meanwhile stays so)."""
    if not _HASH_SLOTS.acquire(timeout=HASH_WAIT_S):
        return  # the next sign-in upgrades it
    try:
        new_hash = _HASHER.hash(password)
    finally:
        _HASH_SLOTS.release()
    try:
        with users_lock(path):
            users = read_users(path)
            now = users.get(record.name)
            if now is None or now.password_hash != record.password_hash:
                log.info("password hash of %r not upgraded: the user was changed or removed meanwhile", record.name)
                return
            write_users(path, {**users, record.name: UserRecord(now.name, now.role, new_hash, now.email)})
    except (OSError, UsersFileError) as exc:  # signing in still works with the old hash
        log.warning("could not upgrade the password hash of %r: %s", record.name, exc)


def sign_in(path: Path, name: str, password: str, throttle: LoginThrottle) -> LoginResult:
    """Check a name and password against the users file. Constant-time verification (Argon2, at most
    :data:`MAX_CONCURRENT_HASHES` at once), an unknown name verified against a dummy hash, failures delayed and
    locked out by ``throttle``; a hash made with older parameters is upgraded in the file on success (under the
    users-file lock, re-read). Nothing secret is logged."""
    name = name.strip()
    paused = throttle.paused_for()
    if paused > 0:
        log.warning("sign-in for %r refused: too many failed sign-ins on this dashboard, paused %.0f s", name, paused)
        return LoginResult(None, f"Too many failed sign-ins on this dashboard: try again in {paused:.0f} s.")
    wait = throttle.locked_for(name)
    if wait > 0:
        log.warning("sign-in for %r refused: locked for another %.0f s", name, wait)
        return LoginResult(None, f"Too many failed sign-ins for this name: try again in {wait:.0f} s.")
    record = read_users(path).get(name)  # a damaged file raises: the gate shows it and lets nobody in
    ok: bool | None = False
    if len(password) <= MAX_PASSWORD_LENGTH:
        ok = _verify(record.password_hash if record and record.password_hash else _dummy_hash(), password)
    if ok is None:
        log.warning("sign-in for %r refused: %d password checks already running", name, MAX_CONCURRENT_HASHES)
        return LoginResult(None, BUSY_MESSAGE)
    if not ok or record is None or record.password_hash is None:
        log.warning("failed sign-in for %r", name)
        throttle.failed(name)
        return LoginResult(None, "Unknown name or wrong password.")
    throttle.succeeded(name)
    if _HASHER.check_needs_rehash(record.password_hash):
        _upgrade_hash(path, record, password)
    log.info("signed in %r (role %s)", name, record.role)
    return LoginResult(record.user("password"))
