"""One settings module: every variable is read in core/settings.py, and README.md's table is core/settings.py's."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from core import settings

ROOT = Path(__file__).resolve().parents[1]
# os.environ reads allowed outside core/settings.py: variables of other programs, and the test-only crash hook
FOREIGN_READS = {"core/models/backbone.py": {"HF_HUB_CACHE", "HF_HOME", "TORCH_HOME"},
                 "core/line/watch.py": {"CRASH_ENV"}}


def _text(path: Path) -> str:
    """``path``'s text; empty for a file removed since it was listed (other work in the same tree)."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


def _readme_rows() -> dict[str, tuple[str, str, str]]:
    """README's "Settings" table: variable -> (default, read by, meaning)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)
    assert len(section) == 2, "expected a '## Settings' section in README.md, found none"
    rows: dict[str, tuple[str, str, str]] = {}
    for line in section[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| `") and len(cells) == 4:
            assert cells[0] not in rows, f"{cells[0]} has two rows in README.md"
            rows[cells[0].strip("`")] = (cells[1], cells[2], cells[3])
    return rows


def test_readme_table_is_the_settings_table() -> None:
    rows = _readme_rows()
    table = {v.name: (v.default, v.read_by, v.meaning) for v in settings.VARIABLES}
    assert set(rows) == set(table), (f"README.md's Settings table and core/settings.py's VARIABLES differ: only in "
                                     f"README {sorted(set(rows) - set(table))}, only in settings "
                                     f"{sorted(set(table) - set(rows))}; the table is:\n{settings.markdown_table()}")
    for name, cells in table.items():
        assert rows[name] == cells, f"README.md's row for {name} differs; expected:\n{settings.markdown_table()}"


def _literal_names(text: str) -> set[str]:
    """Environment variable names written in ``text``: quoted ``INSPECT_*`` / ``QDRANT_URL`` and shell ``$NAME``."""
    return set(re.findall(r"""(?:["'`]|\$\{?)((?:INSPECT|QDRANT)_[A-Z_]+)""", text))


def test_every_variable_the_product_names_has_a_row() -> None:
    known = {v.name for v in settings.VARIABLES}
    files = [ROOT / "app.py", ROOT / "run_app.sh", *sorted((ROOT / "core").rglob("*.py")),
             *sorted((ROOT / "ui").rglob("*.py")), *sorted((ROOT / "pages").rglob("*.py")),
             *sorted((ROOT / "benchmarks").rglob("*.py")), *sorted((ROOT / "tools").rglob("*.py")),
             *(p for p in sorted((ROOT / "tests").rglob("*.py")) if p.name != "test_settings.py")]
    missing = {f"{p.relative_to(ROOT)}: {name}" for p in files for name in _literal_names(_text(p)) - known}
    assert not missing, f"variables without a row in core/settings.py's VARIABLES (and README.md): {sorted(missing)}"
    constants = {value for value in vars(settings).values() if isinstance(value, str) and re.fullmatch(
        r"(?:INSPECT|QDRANT)_[A-Z_]+", value)}
    assert constants == known, f"core/settings.py names variables it has no row for: {sorted(constants - known)}"


def _environ_reads(tree: ast.AST) -> list[str]:
    """What ``tree`` reads from the environment: the key of each ``os.environ.get(X)``, ``os.getenv(X)`` and
    ``os.environ[X]``; any other use of ``os.environ`` but a write (``update``, ``pop``, ``setdefault``, an item
    assigned) reads the whole mapping."""
    parent = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    reads = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "os.getenv" and node.args:
            reads.append(ast.unparse(node.args[0]).strip("'\""))
        if not (isinstance(node, ast.Attribute) and ast.unparse(node) == "os.environ"):
            continue
        up = parent.get(node)
        if isinstance(up, ast.Attribute) and up.attr in ("update", "pop", "setdefault"):
            continue
        call = parent.get(up) if isinstance(up, ast.Attribute) else None
        if isinstance(up, ast.Attribute) and up.attr == "get" and isinstance(call, ast.Call) and call.args:
            reads.append(ast.unparse(call.args[0]).strip("'\""))
        elif isinstance(up, ast.Subscript) and up.value is node:
            if isinstance(up.ctx, ast.Load):
                reads.append(ast.unparse(up.slice).strip("'\""))
        else:
            reads.append("os.environ (the whole mapping)")
    return reads


def test_no_module_but_settings_reads_the_environment() -> None:
    found = {}
    for path in [ROOT / "app.py", *(ROOT / "core").rglob("*.py"), *(ROOT / "ui").rglob("*.py"),
                 *(ROOT / "pages").rglob("*.py")]:
        name = str(path.relative_to(ROOT))
        if name == "core/settings.py":
            continue
        reads = set(_environ_reads(ast.parse(_text(path)))) - FOREIGN_READS.get(name, set())
        if reads:
            found[name] = sorted(reads)
    assert not found, f"expected environment variables read in core/settings.py only, found reads in {found}"


def test_the_scanner_sees_each_way_of_reading() -> None:
    code = ("import os\na = os.environ.get('INSPECT_X')\nb = os.getenv('Y')\nc = os.environ['Z']\n"
            "env = os.environ if a is None else a\nos.environ['W'] = '1'\n")
    reads = _environ_reads(ast.parse(code))
    assert {"INSPECT_X", "Y", "Z", "os.environ (the whole mapping)"} <= set(reads) and "W" not in reads


@pytest.mark.parametrize(("name", "value", "call", "message"), [
    (settings.DEVICE_ENV, "tpu", settings.device, r"expected INSPECT_DEVICE in \('auto', 'cpu', 'cuda'\), found 'tpu'"),
    (settings.LOG_LEVEL_ENV, "loud", settings.log_level, "INSPECT_LOG_LEVEL: expected one of DEBUG, .*found 'LOUD'"),
    (settings.LOG_JSON_ENV, "maybe", settings.log_json, "INSPECT_LOG_JSON: expected 1 or 0 .*found 'maybe'"),
    (settings.SERVICE_WORKERS_ENV, "0", settings.service_workers, "INSPECT_SERVICE_WORKERS: expected a whole number"),
])
def test_malformed_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str, call,
                                            message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        call()


def test_defaults_and_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for v in settings.VARIABLES:
        monkeypatch.delenv(v.name, raising=False)
    assert settings.model_store() == ROOT / "models" and settings.data_roots() == (ROOT / "demo_data",)
    assert settings.line_log(tmp_path) == tmp_path / ".line" / "results.jsonl"
    assert (settings.device(), settings.log_level(), settings.log_json()) == ("auto", "WARNING", False)
    assert (settings.api_key(), settings.api_key_file(), settings.qdrant_url()) == (None, None, None)
    assert (settings.service_store(), settings.service_workers(), settings.service_queue()) == (ROOT / "models", 2,
                                                                                               None)
    monkeypatch.setenv(settings.LINE_LOG_ENV, str(tmp_path / "line.jsonl"))
    monkeypatch.setenv(settings.DEVICE_ENV, " CPU ")
    monkeypatch.setenv(settings.QDRANT_URL_ENV, "http://qdrant:6333")
    for name, value in settings.log_environment("INFO", True).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv(settings.SERVICE_QUEUE_ENV, "9")
    assert settings.line_log(tmp_path / "store") == tmp_path / "line.jsonl"
    assert (settings.device(), settings.log_level(), settings.log_json()) == ("cpu", "INFO", True)
    assert (settings.qdrant_url(), settings.service_queue()) == ("http://qdrant:6333", 9)


def test_the_cli_defaults_are_the_apps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.cli import build_parser

    for v in settings.VARIABLES:
        monkeypatch.delenv(v.name, raising=False)
    monkeypatch.chdir(tmp_path)  # not the working directory's models/ or demo_data/
    assert build_parser().parse_args(["list"]).store == settings.model_store() == ROOT / "models"
    assert build_parser().parse_args(["demo"]).out == settings.data_roots()[0] == ROOT / "demo_data"
    monkeypatch.setenv(settings.DATA_ROOT_ENV, str(tmp_path / "data"))
    assert build_parser().parse_args(["demo"]).out == tmp_path / "data"
    script = (ROOT / "run_app.sh").read_text()
    assert "settings.data_roots()[0]" in script and "settings.model_store()" in script  # no default of its own
