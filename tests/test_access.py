"""Dashboard access: bind address, users file, password hashing and lockout, roles, and the login gate in AppTest
(a logged-out visitor, an operator, an engineer, an identity-provider sign-in)."""

from __future__ import annotations

import io
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from core import access, cli
from core.access import AccessDenied, AccessMode, LoginThrottle, Permission, Role, User
from core.store import lifecycle as det
from core.store import model_store as store_module
from core.store.model_store import ModelStore
from tests.conftest import dashboard_env

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120
OPERATOR_PW = "operator-password-1"
ENGINEER_PW = "engineer-password-1"


# --- core.access -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), (None, False), ("192.168.1.20", False), ("line-pc-7", False),
])
def test_only_loopback_addresses_count_as_this_machine(address: str | None, loopback: bool) -> None:
    assert access.is_loopback(address) is loopback


def test_access_mode_refuses_an_exposed_dashboard_without_users() -> None:
    assert access.access_mode("127.0.0.1", False, False) is AccessMode.OPEN
    assert access.access_mode("0.0.0.0", False, False) is AccessMode.REFUSED
    assert access.access_mode(None, False, False) is AccessMode.REFUSED  # Streamlit's default: every interface
    assert access.access_mode("0.0.0.0", True, False) is AccessMode.LOGIN
    assert access.access_mode("0.0.0.0", False, True) is AccessMode.LOGIN
    assert access.access_mode("127.0.0.1", True, False) is AccessMode.LOGIN  # users configured: always a login


def test_role_permission_table() -> None:
    assert access.ROLE_PERMISSIONS[Role.OPERATOR] == {Permission.INSPECT, Permission.MARK}
    assert access.ROLE_PERMISSIONS[Role.ENGINEER] == set(Permission)
    operator = User("olga", Role.OPERATOR)
    assert access.authorize(operator, Permission.MARK) is operator
    for permission in set(Permission) - {Permission.INSPECT, Permission.MARK}:
        with pytest.raises(AccessDenied, match="olga is signed in as operator, which may not .*needs the role engineer"):
            access.authorize(operator, permission)
    with pytest.raises(AccessDenied, match="expected a signed-in user to train models, found nobody"):
        access.authorize(None, Permission.TRAIN)
    assert access.authorize(access.LOCAL_ENGINEER, Permission.TRAIN) is access.LOCAL_ENGINEER


def test_users_file_holds_argon2_hashes_only_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    access.add_user(path, "olga", "operator", OPERATOR_PW)
    access.add_user(path, "eve", Role.ENGINEER, None, email="Eve@Example.com")
    text = path.read_text()
    assert OPERATOR_PW not in text
    users = access.read_users(path)
    assert users["olga"].role is Role.OPERATOR and users["olga"].password_hash.startswith("$argon2id$")
    assert users["eve"].password_hash is None and users["eve"].email == "eve@example.com"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(access.UsersFileError, match="exists already"):
        access.add_user(path, "olga", "engineer", OPERATOR_PW)
    access.add_user(path, "olga", "engineer", OPERATOR_PW, replace=True)
    assert access.read_users(path)["olga"].role is Role.ENGINEER
    with pytest.raises(access.UsersFileError, match="at least 8 characters, found 3"):
        access.add_user(path, "bob", "operator", "abc")
    with pytest.raises(access.UsersFileError, match="expected a password or an email address"):
        access.add_user(path, "bob", "operator", None)
    with pytest.raises(access.UsersFileError, match="expected role operator or engineer, found 'admin'"):
        access.add_user(path, "bob", "admin", OPERATOR_PW)
    access.remove_user(path, "olga")
    assert set(access.read_users(path)) == {"eve"}


def test_the_users_file_is_private_before_it_is_renamed_into_place(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The temp file gets its mode before ``os.replace``: the users file is never briefly world-readable."""
    modes: dict[str, int] = {}
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        modes[Path(dst).name] = stat.S_IMODE(os.stat(src).st_mode)
        real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", spy)
    access.add_user(tmp_path / "users.json", "olga", "operator", OPERATOR_PW)
    assert modes["users.json"] == 0o600
    store_module.atomic_write_bytes(tmp_path / "plain.bin", b"x")
    assert modes["plain.bin"] == 0o644  # the default is unchanged
    store_module.atomic_write_bytes(tmp_path / "group.bin", b"x", mode=0o640)
    assert modes["group.bin"] == 0o640 == stat.S_IMODE(os.stat(tmp_path / "group.bin").st_mode)


ADD_USERS = """
import sys, time
from pathlib import Path
from core import access
path, prefix, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
while not go.exists():
    time.sleep(0.002)
for i in range(5):
    access.add_user(path, f"{prefix}{i}", "operator", "password-123")
"""


def test_two_processes_adding_users_at_once_lose_none(tmp_path: Path) -> None:
    path, go = tmp_path / "users.json", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", ADD_USERS, str(path), prefix, str(go)], cwd=ROOT, env=env)
             for prefix in ("a", "b")]
    time.sleep(1.0)  # both imported and waiting
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert sorted(access.read_users(path)) == [f"{p}{i}" for p in "ab" for i in range(5)]


class HookedHasher:
    """The real hasher, with ``during_verify`` run while a password is being verified."""

    def __init__(self, during_verify: Callable[[], None]) -> None:
        self.real, self.during_verify = PasswordHasher(), during_verify

    def verify(self, digest: str, password: str) -> bool:
        ok = self.real.verify(digest, password)
        self.during_verify()
        return ok

    def hash(self, password: str) -> str:
        return self.real.hash(password)

    def check_needs_rehash(self, digest: str) -> bool:
        return self.real.check_needs_rehash(digest)


@pytest.mark.parametrize("removed", ["bob", "olga"])
def test_a_password_rehash_at_sign_in_does_not_resurrect_a_removed_user(tmp_path: Path, removed: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users.json"
    old_hash = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(OPERATOR_PW)  # needs a rehash
    access.write_users(path, {"olga": access.UserRecord("olga", Role.OPERATOR, old_hash),
                              "bob": access.UserRecord("bob", Role.ENGINEER, old_hash)})
    monkeypatch.setattr(access, "_HASHER", HookedHasher(lambda: access.remove_user(path, removed)))
    access.sign_in(path, "olga", OPERATOR_PW, LoginThrottle(sleep=lambda _s: None))
    users = access.read_users(path)
    assert removed not in users  # the rehash wrote back what it re-read under the lock, not its stale copy
    if removed == "bob":
        assert not PasswordHasher().check_needs_rehash(users["olga"].password_hash or "")  # upgraded


@pytest.mark.parametrize(("content", "message"), [
    ("{broken", "expected JSON"),
    ('{"users": []}', "expected an object with a 'users' object"),
    ('{"users": {"a": {"role": "boss", "password": null, "email": "a@b.c"}}}', "expected role operator or engineer"),
    ('{"users": {"a": {"role": "operator", "password": "plaintext"}}}', "expected an Argon2 password hash"),
])
def test_a_damaged_users_file_is_refused_with_the_reason(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "users.json"
    path.write_text(content)
    with pytest.raises(access.UsersFileError, match=message):
        access.read_users(path)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_sign_in_verifies_delays_failures_and_locks_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "users.json"
    access.add_user(path, "olga", "operator", OPERATOR_PW)
    fake = FakeTime()
    throttle = LoginThrottle(max_failures=3, lockout_s=60, delay_s=0.5, clock=fake.clock, sleep=fake.sleep)
    caplog.set_level(logging.DEBUG)
    ok = access.sign_in(path, "olga", OPERATOR_PW, throttle)
    assert ok.user == User("olga", Role.OPERATOR, "password")
    wrong = access.sign_in(path, "olga", "wrong-password", throttle)
    unknown = access.sign_in(path, "nobody", "wrong-password", throttle)
    assert wrong.user is None and unknown.user is None
    assert wrong.message == unknown.message == "Unknown name or wrong password."  # says nothing about which
    assert fake.slept == [0.5, 0.5]  # every failure is answered late
    access.sign_in(path, "olga", "wrong-again-1", throttle)
    access.sign_in(path, "olga", "wrong-again-1", throttle)  # olga's third failure: locked (nobody's is apart)
    locked = access.sign_in(path, "olga", OPERATOR_PW, throttle)
    assert locked.user is None and "try again in 60 s" in locked.message  # even the right password
    fake.now += 61
    assert access.sign_in(path, "olga", OPERATOR_PW, throttle).user is not None
    assert all(secret not in caplog.text for secret in (OPERATOR_PW, "wrong-password", "wrong-again-1", "$argon2"))
    assert "failed sign-in for 'olga'" in caplog.text


def test_the_throttle_forgets_stale_names_so_made_up_names_cannot_grow_it() -> None:
    fake = FakeTime()
    throttle = LoginThrottle(max_tracked=100, window_s=60, clock=fake.clock, sleep=fake.sleep)
    for i in range(1000):
        throttle.failed(f"made-up-{i}")
        fake.now += 1
    assert len(throttle._failures) <= 101  # the cap, not the 1,000 names tried


def test_the_throttle_stays_bounded_when_names_come_faster_than_the_window() -> None:
    fake = FakeTime()  # the clock never moves: no name is ever stale
    throttle = LoginThrottle(max_tracked=100, max_failures=2, max_global_failures=10**9, clock=fake.clock,
                             sleep=fake.sleep)
    for i in range(1000):
        throttle.failed(f"made-up-{i}")
        throttle.failed(f"made-up-{i}")  # the second failure locks it
        throttle.failed(f"other-{i}")
    assert len(throttle._failures) <= 100 and len(throttle._locked_until) <= 100
    assert throttle.locked_for("made-up-999") > 0  # the newest are kept


def test_many_failed_sign_ins_across_names_slow_everybody_down(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    access.add_user(path, "olga", "operator", OPERATOR_PW)
    fake = FakeTime()
    throttle = LoginThrottle(max_global_failures=5, global_window_s=60, clock=fake.clock, sleep=fake.sleep)
    for i in range(5):
        assert access.sign_in(path, f"made-up-{i}", "wrong-password", throttle).user is None
    refused = access.sign_in(path, "olga", OPERATOR_PW, throttle)
    assert refused.user is None and "Too many failed sign-ins on this dashboard: try again in 60 s" in refused.message
    fake.now += 61
    assert access.sign_in(path, "olga", OPERATOR_PW, throttle).user is not None


def test_at_most_two_password_verifications_run_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each Argon2 verification allocates 64 MiB: a burst of sign-ins must not run them all at once."""
    path = tmp_path / "users.json"
    access.add_user(path, "olga", "operator", OPERATOR_PW)
    running, peak, guard = [0], [0], threading.Lock()

    def slow() -> None:
        with guard:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with guard:
            running[0] -= 1

    monkeypatch.setattr(access, "_HASHER", HookedHasher(slow))
    throttle = LoginThrottle(sleep=lambda _s: None)
    threads = [threading.Thread(target=access.sign_in, args=(path, "olga", OPERATOR_PW, throttle))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak[0] <= 2


def test_an_identity_provider_user_without_password_cannot_sign_in_with_one(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    access.add_user(path, "eve", "engineer", None, email="eve@example.com")
    throttle = LoginThrottle(sleep=lambda _s: None)
    assert access.sign_in(path, "eve", "", throttle).user is None
    assert access.user_for_email(access.read_users(path), "EVE@example.com ").name == "eve"  # type: ignore[union-attr]
    assert access.user_for_email(access.read_users(path), "") is None


def test_cli_adds_users_with_the_password_from_stdin_never_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "users.json"
    monkeypatch.setattr("sys.stdin", io.StringIO(OPERATOR_PW + "\n"))
    assert cli.main(["users", "--users-file", str(path), "add", "olga", "--role", "operator"]) == 0
    assert access.sign_in(path, "olga", OPERATOR_PW, LoginThrottle()).user is not None
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert cli.main(["users", "--users-file", str(path), "add", "sso", "--role", "engineer", "--email", "s@x.org",
                     "--no-password"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert cli.main(["users", "--users-file", str(path), "add", "bob", "--role", "operator"]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert cli.main(["users", "--users-file", str(path), "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["olga\toperator\t-\tpassword", "sso\tengineer\ts@x.org\tsso only"]
    with pytest.raises(SystemExit):  # there is no way to put a password on the command line
        cli.main(["users", "--users-file", str(path), "add", "bob", "--role", "operator", "--password", "x" * 10])


def test_users_file_defaults_to_the_model_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core import settings

    monkeypatch.delenv("INSPECT_USERS_FILE", raising=False)
    monkeypatch.setenv("INSPECT_MODEL_STORE", str(tmp_path / "store"))
    assert settings.users_file() == tmp_path / "store" / "users.json"
    monkeypatch.setenv("INSPECT_USERS_FILE", str(tmp_path / "elsewhere.json"))
    assert settings.users_file() == tmp_path / "elsewhere.json"


def test_the_dashboard_binds_to_loopback_by_default() -> None:
    import tomllib

    assert tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())["server"]["address"] == "127.0.0.1"
    assert '--server.address "${STREAMLIT_SERVER_ADDRESS:-127.0.0.1}" "$@"' in (ROOT / "run_app.sh").read_text()


# --- the gate in AppTest -----------------------------------------------------------------------------------------

@pytest.fixture()
def env(demo_root: Path, trained_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    store = dashboard_env(demo_root, trained_store, tmp_path, monkeypatch)
    from ui import auth

    monkeypatch.setattr(auth, "THROTTLE", LoginThrottle(delay_s=0.0))
    return store


@pytest.fixture()
def exposed() -> Iterator[None]:
    """The server as `--server.address 0.0.0.0` starts it."""
    before = st_config.get_option("server.address")
    st_config.set_option("server.address", "0.0.0.0")
    try:
        yield
    finally:
        st_config.set_option("server.address", before)


def users(store: Path) -> Path:
    path = store / "users.json"
    access.add_user(path, "olga", "operator", OPERATOR_PW)
    access.add_user(path, "erik", "engineer", ENGINEER_PW)
    return path


def app() -> AppTest:
    return AppTest.from_string((ROOT / "app.py").read_text(), default_timeout=TIMEOUT)


def sign_in(at: AppTest, name: str, password: str) -> AppTest:
    at.text_input(key="login_name").input(name)
    at.text_input(key="login_password").input(password)
    next(b for b in at.button if b.label == "Sign in").click()
    at.run()
    assert not at.exception, at.exception
    return at


def goto(at: AppTest, name: str) -> AppTest:
    at.switch_page(str(ROOT / "pages" / f"{name}.py"))
    at.run()
    assert not at.exception, at.exception
    return at


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [e.value for e in at.error] + [c.value for c in at.caption]
    parts += [i.value for i in at.info] + [t.value for t in at.title]
    return "\n".join(str(p) for p in parts)


def test_loopback_without_users_is_open_to_the_local_engineer(env: Path) -> None:
    at = app()
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Models"
    assert not button(at, "Train").disabled
    assert not [b for b in at.button if b.label in ("Sign in", "Sign out")]


def test_exposed_without_users_refuses_to_serve_pages(env: Path, exposed: None) -> None:
    at = app()
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Inspector"]  # no page, no sidebar selection
    assert "not served: it listens on 0.0.0.0" in at.error[0].value
    assert "python -m core users add NAME --role operator|engineer" in at.error[0].value
    assert not at.sidebar.selectbox and not at.button
    at.switch_page(str(ROOT / "pages" / "models.py"))  # a deep link is refused the same way
    at.run()
    assert [t.value for t in at.title] == ["Inspector"]


def test_logged_out_visitor_gets_the_sign_in_form_and_no_page(env: Path, exposed: None) -> None:
    users(env)
    at = app()
    at.run()
    assert [t.value for t in at.title] == ["Inspector"]
    assert at.text_input(key="login_password").proto.type == at.text_input(key="login_password").proto.PASSWORD
    sign_in(at, "olga", "not-the-password")
    assert any("Unknown name or wrong password" in e.value for e in at.error)
    assert [t.value for t in at.title] == ["Inspector"]
    goto(at, "models")
    assert [t.value for t in at.title] == ["Inspector"]  # a deep link does not bypass the gate


def test_operator_inspects_and_marks_but_cannot_train_save_switch_or_annotate(env: Path, exposed: None) -> None:
    users(env)
    store = ModelStore(env)
    v1 = store.current("demo_metal", "patchcore")
    model = det.load(v1)
    v2 = det.save_calibration(model, model.calibration.with_thresholds(123.0, model.calibration.pixel_threshold, "user"))
    at = sign_in(app().run(), "olga", OPERATOR_PW)
    assert at.title[0].value == "Models"
    assert "Signed in as **olga** (operator)" in [c.value for c in at.sidebar.caption]
    at.selectbox(key="version_pick").set_value(1).run()
    assert button(at, "Use this version").disabled
    assert "Needs the engineer role" in button(at, "Use this version").help
    assert button(at, "Train").disabled
    goto(at, "thresholds")
    assert button(at, "Save thresholds with the model").disabled
    assert button(at, "Re-evaluate on the current test images").disabled
    goto(at, "annotate")
    assert at.title[0].value == "Annotate defects"
    goto(at, "inspect")
    at.multiselect(key="inspect_pick").set_value([at.multiselect(key="inspect_pick").options[0]]).run()
    assert not at.exception, at.exception
    next(s for s in at.selectbox if s.label == "Defect type").set_value("scratch").run()
    defect = next(b for b in at.button if b.label == "Mark as defect")
    assert not defect.disabled  # operators mark
    defect.click()
    at.run()
    assert not at.exception, at.exception
    assert any("filed as" in s.value for s in at.success), [e.value for e in at.error]
    at.button(key="feedback_undo").click()
    at.run()
    assert not at.exception, at.exception
    assert store.current("demo_metal", "patchcore") == v2


def test_a_write_is_refused_where_it_runs_not_only_by_a_disabled_button(env: Path, exposed: None,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The buttons are drawn enabled for an operator (as a page that forgot to disable one would): the clicks
    reach the write actions, which refuse them, and nothing changes."""
    from ui import auth

    users(env)
    store = ModelStore(env)
    v1 = store.current("demo_metal", "patchcore")
    model = det.load(v1)
    v2 = det.save_calibration(model, model.calibration.with_thresholds(123.0, model.calibration.pixel_threshold, "user"))
    monkeypatch.setattr(auth, "can", lambda permission: True)
    at = sign_in(app().run(), "olga", OPERATOR_PW)
    at.selectbox(key="version_pick").set_value(1).run()
    button(at, "Use this version").click()
    at.run()
    assert not at.exception, at.exception
    assert any("Not allowed: olga is signed in as operator, which may not switch model versions" in e.value
               for e in at.error)
    assert store.current("demo_metal", "patchcore") == v2  # unchanged
    at.run()  # the refusal stopped the page: draw it whole again
    button(at, "Train").click()
    at.run()
    assert any("may not train models" in e.value for e in at.error)
    assert "train_job" not in at.session_state
    assert store.version_numbers("demo_metal", "patchcore") == [1, 2]
    goto(at, "thresholds")
    button(at, "Re-evaluate on the current test images").click()
    at.run()
    assert any("may not run evaluations" in e.value for e in at.error)


def test_engineer_switches_versions_and_signs_out(env: Path, exposed: None) -> None:
    users(env)
    store = ModelStore(env)
    v1 = store.current("demo_metal", "patchcore")
    model = det.load(v1)
    det.save_calibration(model, model.calibration.with_thresholds(123.0, model.calibration.pixel_threshold, "user"))
    at = sign_in(app().run(), "erik", ENGINEER_PW)
    assert not button(at, "Train").disabled
    at.selectbox(key="version_pick").set_value(1).run()
    button(at, "Use this version").click()
    at.run()
    assert not at.exception, at.exception
    assert store.current("demo_metal", "patchcore") == v1
    at.button(key="auth_sign_out").click()
    at.run()
    assert [t.value for t in at.title] == ["Inspector"]


def test_removing_a_user_signs_them_out_at_the_next_rerun(env: Path, exposed: None) -> None:
    path = users(env)
    at = sign_in(app().run(), "olga", OPERATOR_PW)
    assert at.title[0].value == "Models"
    access.remove_user(path, "olga")
    at.run()
    assert [t.value for t in at.title] == ["Inspector"]


def test_a_damaged_users_file_lets_nobody_in_even_on_loopback(env: Path) -> None:
    (env / "users.json").write_text("{broken")
    at = app()
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Inspector"]
    assert any("users file cannot be used" in e.value and "expected JSON" in e.value for e in at.error)


OIDC = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
        "client_id": "inspector", "client_secret": "s", "server_metadata_url": "https://idp.example/.well-known"}


def test_identity_provider_sign_in_maps_the_email_to_a_role(env: Path, exposed: None) -> None:
    access.add_user(env / "users.json", "olga", "operator", None, email="olga@example.com")
    at = app()
    at.secrets["auth"] = OIDC
    at.user = {"is_logged_in": False}
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Inspector"]
    assert any(b.label == "Sign in with your identity provider" for b in at.button)
    at.user = {"is_logged_in": True, "email": "Olga@example.com", "email_verified": True}
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Models"
    assert "Signed in as **olga** (operator)" in [c.value for c in at.sidebar.caption]
    assert button(at, "Train").disabled
    at.user = {"is_logged_in": True, "email": "stranger@example.com", "email_verified": True}
    at.run()
    assert [t.value for t in at.title] == ["Inspector"]
    assert any("stranger@example.com" in e.value and "no role on this dashboard" in e.value for e in at.error)


@pytest.mark.parametrize("claims", [{"email_verified": False}, {}, {"email_verified": "true"}])
def test_an_identity_provider_address_counts_only_when_the_provider_verified_it(env: Path, exposed: None,
                                                                                claims: dict[str, object]) -> None:
    access.add_user(env / "users.json", "erik", "engineer", None, email="erik@example.com")
    at = app()
    at.secrets["auth"] = OIDC
    at.user = {"is_logged_in": True, "email": "erik@example.com", **claims}
    at.run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == ["Inspector"]  # no page for an unverified address
    assert any("has not verified" in e.value and "erik@example.com" in e.value for e in at.error)


def test_the_users_file_is_read_at_most_once_per_run(env: Path, exposed: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    users(env)
    at = sign_in(app().run(), "olga", OPERATOR_PW)
    assert at.title[0].value == "Models"
    reads = [0]
    real_read = access.read_users

    def counting(path: Path) -> dict[str, access.UserRecord]:
        reads[0] += 1
        return real_read(path)

    monkeypatch.setattr(access, "read_users", counting)
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Models"
    assert reads[0] <= 1  # the gate, the menu and every button's role check share one read
