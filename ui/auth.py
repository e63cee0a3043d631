"""The login gate every page runs behind, and the role checks pages call where they write.

The frame (``ui/frame.py``) calls :func:`check` before the navigation: when nobody is signed in, the visitor gets
:func:`draw_gate` (the sign-in form, the identity provider's button, or the refusal to serve an exposed dashboard
that has no users configured) and no page. The rules themselves (modes, roles, permissions, hashing, lockout)
are in ``core/access.py``.

Pages call :func:`require` right before each write action (it re-reads who is signed in, so a role changed or
removed in the users file counts at once) and :func:`can` to disable the buttons an operator may not use.

Two ways to sign in, both mapped to a role by the users file (``INSPECT_USERS_FILE``, default
``<model store>/users.json``):

* name and password (``python -m core users add NAME --role operator``), kept for this browser session;
* Streamlit's own OIDC login (``st.login``) when ``.streamlit/secrets.toml`` has an ``[auth]`` section; the
  provider's email address is looked up in the users file (``--email``) only when the provider says it verified
  the address (the ``email_verified`` claim is ``true``: anybody can put any address on an account at many
  providers); an unverified address, or one without a role there, is refused.

The users file is parsed once per change (:func:`_users`, keyed on the file's inode, size and times), not at
every role check: a page's many :func:`can`/:func:`require` calls share one read, and a removed user is still
signed out at their next click (the write replaces the file, which changes the key).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from core import access
from core import settings as app_settings
from core.access import AccessDenied, AccessMode, Permission, User

log = logging.getLogger(__name__)

SESSION_KEY = "_auth_password_user"  # (name, password hash) signed in with a password in this browser session
THROTTLE = access.LoginThrottle()  # one per server process: failed sign-ins are counted across sessions
_USERS_CACHE: dict[Path, tuple[tuple[int, ...], dict[str, access.UserRecord] | access.UsersFileError]] = {}
_USERS_GUARD = threading.Lock()


@dataclass(frozen=True)
class Gate:
    """Who may see pages in this run. ``user`` None: nobody signed in; ``problem``: why not, when it is not
    simply "not signed in yet" (a damaged users file, an identity without a role)."""

    mode: AccessMode
    user: User | None
    providers: tuple[str | None, ...] = ()
    has_password_users: bool = False
    problem: str | None = None


def server_address() -> str | None:
    """The address Streamlit binds (``server.address``: config.toml, ``--server.address`` or
    ``STREAMLIT_SERVER_ADDRESS``); None or empty binds every interface."""
    value = st.get_option("server.address")
    return str(value) if value else None


def oidc_providers() -> tuple[str | None, ...]:
    """The identity providers in ``.streamlit/secrets.toml``'s ``[auth]``: ``(None,)`` for one configured in
    ``[auth]`` itself, the names of ``[auth.NAME]`` sections that have a ``client_id``, or () for none."""
    try:
        section = st.secrets.get("auth")
    except FileNotFoundError:  # no secrets.toml at all
        return ()
    if not isinstance(section, Mapping) or not section:
        return ()
    if "client_id" in section:
        return (None,)
    return tuple(str(name) for name, value in section.items() if isinstance(value, Mapping) and "client_id" in value)


def _users(path: Path) -> dict[str, access.UserRecord]:
    """The users in ``path`` as :func:`core.access.read_users` gives them (or raises), parsed again only when the
    file changed: keyed on its device, inode, size and modification/change times (a ``stat``, not a read, per call).
    A missing file is not cached."""
    try:
        st_ = os.stat(path)
    except FileNotFoundError:
        return {}
    except OSError:
        return access.read_users(path)  # it says what is wrong
    key = (st_.st_dev, st_.st_ino, st_.st_size, st_.st_mtime_ns, st_.st_ctime_ns)
    with _USERS_GUARD:
        cached = _USERS_CACHE.get(path)
    if cached is None or cached[0] != key:
        try:
            value: dict[str, access.UserRecord] | access.UsersFileError = access.read_users(path)
        except access.UsersFileError as exc:
            value = exc
        cached = (key, value)
        with _USERS_GUARD:
            _USERS_CACHE.clear()  # one users file per process: keep one entry
            _USERS_CACHE[path] = cached
    if isinstance(cached[1], access.UsersFileError):
        raise access.UsersFileError(str(cached[1]))
    return dict(cached[1])


def check() -> Gate:
    """Who is signed in now, from the users file (as it is now, see :func:`_users`) and the session (nothing is
    drawn)."""
    path = app_settings.users_file()
    providers = oidc_providers()
    problem = None
    try:
        users = _users(path)
    except access.UsersFileError as exc:  # fail closed: a damaged file lets nobody in
        users, problem = {}, f"The users file cannot be used, so nobody can sign in: {exc}"
    configured = problem is not None or path.exists()
    mode = access.access_mode(server_address(), configured, bool(providers))
    password_users = any(u.password_hash for u in users.values())
    if mode is AccessMode.OPEN:
        return Gate(mode, access.LOCAL_ENGINEER)
    if mode is AccessMode.REFUSED or problem:
        return Gate(mode, None, providers, password_users, problem)
    if providers and st.user.get("is_logged_in"):
        email = str(st.user.get("email") or "")
        if st.user.get("email_verified") is not True:  # an address the provider did not verify proves nothing
            return Gate(mode, None, providers, password_users,
                        f"You are signed in as {email or 'an identity without an email address'} through the "
                        "identity provider, but the provider has not verified that address (its email_verified "
                        "claim is not true), so it cannot be matched to a role on this dashboard. Verify the "
                        "address with the provider, or ask an engineer to configure one that verifies addresses.")
        record = access.user_for_email(users, email)
        if record is None:
            return Gate(mode, None, providers, password_users,
                        f"You are signed in as {email or 'an identity without an email address'} through the "
                        "identity provider, but that address has no role on this dashboard. An engineer adds it "
                        f"with `python -m core users add NAME --role operator --email {email or 'ADDRESS'} "
                        "--no-password`.")
        return Gate(mode, record.user("oidc"), providers, password_users)
    signed = st.session_state.get(SESSION_KEY)
    if signed:
        name, digest = signed
        record = users.get(name)
        if record is not None and record.password_hash == digest:  # removed or new password: signed out
            return Gate(mode, record.user("password"), providers, password_users)
        st.session_state.pop(SESSION_KEY, None)
    return Gate(mode, None, providers, password_users)


def current_user() -> User | None:
    """The signed-in user (the local engineer on loopback without users), or None."""
    return check().user


def can(permission: Permission) -> bool:
    """Whether the signed-in user may do ``permission``: for disabling buttons (the action still calls
    :func:`require`)."""
    return access.can(current_user(), permission)


def require(permission: Permission) -> User:
    """The signed-in user, when their role allows ``permission``; otherwise the reason is shown and the run stops
    before the write. Call it where the action is executed."""
    try:
        return access.authorize(current_user(), permission)
    except AccessDenied as exc:
        log.warning("refused: %s", exc)
        st.error(f"Not allowed: {exc}.", icon=":material/lock:")
        st.stop()
        raise  # st.stop raises; this keeps the type checker honest


def only_for(permission: Permission) -> str | None:
    """A button's help text when the signed-in user may not do ``permission`` (None when they may)."""
    return None if can(permission) else f"Needs the engineer role ({access.ACTION_TEXT[permission]})."


def _sign_in_form(gate: Gate) -> None:
    with st.form("login", clear_on_submit=True):
        name = st.text_input("Name", key="login_name")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if not submitted:
        return
    path = app_settings.users_file()
    try:
        result = access.sign_in(path, name, password, THROTTLE)
        record = access.read_users(path).get(name.strip()) if result.user else None
    except access.UsersFileError as exc:
        st.error(str(exc))
        return
    if result.user is None or record is None:
        st.error(result.message)
        return
    st.session_state[SESSION_KEY] = (record.name, record.password_hash)
    st.rerun()


def draw_gate(gate: Gate) -> None:
    """What a visitor who is not signed in sees instead of the pages."""
    st.title("Inspector")
    if gate.mode is AccessMode.REFUSED:
        where = server_address() or "every interface"
        st.error(
            f"**This dashboard is not served: it listens on {where}, beyond this machine, and no users are "
            "configured.** Without a login anyone who reaches it could train, mark images OK (which changes the "
            "model), switch versions and write into the data roots.\n\n"
            f"To expose it, add users first: `python -m core users add NAME --role operator|engineer` (the "
            f"password is asked for; the file is `{app_settings.users_file()}`, or set INSPECT_USERS_FILE), or "
            "configure an identity provider in `.streamlit/secrets.toml` (`[auth]`, see the README, \"Exposing "
            "the dashboard\"). To use it on this machine only, start it on 127.0.0.1 (the default).",
            icon=":material/lock:")
        return
    st.caption("Sign in to inspect, review and mark parts (operators) or to train and tune models (engineers).")
    if gate.problem:
        st.error(gate.problem, icon=":material/lock:")
        if st.user.get("is_logged_in") and st.button("Sign out of the identity provider", key="auth_oidc_out"):
            st.logout()
        if not gate.providers and not gate.has_password_users:
            return
    for provider in gate.providers:
        if not st.user.get("is_logged_in") and st.button(
                f"Sign in with {provider}" if provider else "Sign in with your identity provider",
                key=f"auth_oidc_{provider or 'default'}", type="primary"):
            if provider:
                st.login(provider)
            else:
                st.login()
    if gate.has_password_users or not gate.providers:
        _sign_in_form(gate)
        if not gate.has_password_users:
            st.info("No user has a password yet: add one with `python -m core users add NAME --role engineer`.")


def draw_account(user: User) -> None:
    """Who is signed in, in the sidebar, with Sign out (nothing for the local user on loopback)."""
    if user.source == "local":
        return
    st.sidebar.caption(f"Signed in as **{user.name}** ({user.role.value})")
    if st.sidebar.button("Sign out", key="auth_sign_out", icon=":material/logout:"):
        log.info("signed out %r", user.name)
        if user.source == "oidc":
            st.logout()
        else:
            st.session_state.pop(SESSION_KEY, None)
            st.rerun()
