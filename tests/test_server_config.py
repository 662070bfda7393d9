"""One source of truth for server settings: `ServerConfig` fields make the flags, the
config.toml schema and the docs table; the default port and the version are defined once."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from securechat import __version__
from securechat.cli import build_parser, main
from securechat.cli.common import UsageError
from securechat.cli.config import apply_config
from securechat.cli.server_cmd import server_config, settings_table
from securechat.ports import DEFAULT_PORT
from securechat.protocol.limits import MAX_BANS_LISTED
from securechat.server.config import FieldSetting, ServerConfig, settings
from securechat.version import SOFTWARE, UNKNOWN_VERSION, VERSION, _installed_version

ROOT = Path(__file__).resolve().parent.parent


def configured(tmp_path: Path, argv: list[str], toml: str = "") -> ServerConfig:
    """The ServerConfig `securechat [--config FILE] server ARGV` would run with."""
    parser, commands = build_parser()
    path = None
    if toml:
        path = tmp_path / "config.toml"
        path.write_text(toml)
    apply_config(path, commands)
    return server_config(parser.parse_args(["server", *argv]))


#: Settings whose values are URLs of a kind, and what each needs beside it.
_URLS = {"store": "postgresql://db/securechat", "cluster": "redis://cache:6379/0"}
_NEEDS = {"cluster": ["--store", _URLS["store"]]}


def sample(setting: FieldSetting, tmp_path: Path) -> Any:
    """A valid value of `setting` that is not its default."""
    default = setting.default
    if setting.kind is tuple:
        return ("#dev", "#Help")
    if setting.kind is Path:
        return tmp_path / "elsewhere"
    if setting.kind is str:
        if setting.name in _URLS:
            return _URLS[setting.name]
        return f"{default}x" if setting.name != "host" else "127.0.0.2"
    if setting.kind is int:
        return 3 if default is None else default + 3
    assert setting.kind is float
    return 2.5 if default is None else default * 2 + 0.5


def another(value: Any, tmp_path: Path) -> Any:
    """A valid value of the same kind that is not `value`."""
    if isinstance(value, tuple):
        return ("#other",)
    if isinstance(value, Path):
        return tmp_path / "another"
    if isinstance(value, str):
        return "127.0.0.3" if value == "127.0.0.2" else value + "y"
    return value + 1


def as_flag(value: Any) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


def as_toml(value: Any) -> str:
    if isinstance(value, tuple):
        return json.dumps(list(value))
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    return repr(value)


def test_every_field_is_a_setting_with_a_flag_and_a_file_key() -> None:
    names = [f.name for f in dataclasses.fields(ServerConfig)]
    found = {s.name: s for s in settings()}  # raises if a field was declared without setting()
    assert list(found) == names
    _, commands = build_parser()
    server = commands["server"]
    options = {option: action.dest for action in server._actions for option in action.option_strings}
    for s in found.values():
        assert options.get(s.flag) == s.name, f"{s.name} has no flag {s.flag}"
        assert s.spec.help, f"{s.name} has no help"
        if s.optional:  # None means "derived": --help and the docs must say from what
            assert s.spec.shown_default, f"{s.name}: say what its default None stands for"
    # Only init_data_dir stays out of the file, and it says why.
    assert [s.name for s in found.values() if not s.in_file] == ["init_data_dir"]
    assert found["init_data_dir"].flag == "--init"
    assert found["max_per_ip"].flag == "--max-per-ip"
    assert found["data_dir"].flag == "--data-dir"


def test_flag_config_file_and_default_agree_for_every_setting(tmp_path: Path) -> None:
    defaults = configured(tmp_path, [])
    for s in settings():
        expected_default = s.command_line_default
        if s.name == "data_dir":  # the command always uses a directory, the library may not
            expected_default = defaults.data_dir
            assert expected_default is not None and expected_default.name == "server"
        assert getattr(defaults, s.name) == expected_default, s.name
        if s.kind is bool:
            assert getattr(configured(tmp_path, [s.flag]), s.name) is not expected_default
            continue
        value = sample(s, tmp_path)
        needs = _NEEDS.get(s.name, [])
        assert getattr(configured(tmp_path, [*needs, s.flag, as_flag(value)]), s.name) == value, s.flag
        if s.in_file:
            from_file = configured(tmp_path, needs, f"[server]\n{s.name} = {as_toml(value)}\n")
            assert getattr(from_file, s.name) == value, s.name
            # The flag beats the file.
            other = another(value, tmp_path)
            both = configured(
                tmp_path, [*needs, s.flag, as_flag(other)], f"[server]\n{s.name} = {as_toml(value)}\n"
            )
            assert getattr(both, s.name) == other, s.name


def test_the_room_settings_and_their_defaults() -> None:
    config = ServerConfig()
    assert config.autojoin == ("#lobby",)
    assert (config.max_rooms_per_user, config.max_rooms, config.max_bans_per_room) == (20, 1000, 200)


def test_autojoin_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert configured(tmp_path, ["--autojoin", "#lobby, #help"]).autojoin == ("#lobby", "#help")
    assert configured(tmp_path, ["--autojoin", ""]).autojoin == ()
    for bad, why in (("lobby", "'lobby' is not a room name"), ("#a,#A", "'#A' is listed twice")):
        with pytest.raises(SystemExit):
            configured(tmp_path, ["--autojoin", bad])
        assert why in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a room name"):
        ServerConfig(autojoin=("#ok", "no spaces"))


@pytest.mark.parametrize(
    ("name", "bad", "why"),
    [
        # A longer ban list than one ban_list frame holds made `bans` raise out of the
        # session's logic and end the session.
        ("max_bans_per_room", MAX_BANS_LISTED + 1, f"at most {MAX_BANS_LISTED}"),
        ("max_bans_per_room", 0, "at least 1"),
        ("max_rooms_per_user", 0, "at least 1"),
        ("max_rooms_per_user", -1, "at least 1"),
        ("max_rooms", 0, "at least 1"),
    ],
)
def test_room_caps_out_of_range_are_refused_by_flag_file_and_constructor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, bad: int, why: str
) -> None:
    flag = "--" + name.replace("_", "-")
    with pytest.raises(SystemExit):
        configured(tmp_path, [flag, str(bad)])
    err = capsys.readouterr().err
    assert name in err and why in err, err
    with pytest.raises(UsageError, match=f"{name}.*{why}"):
        configured(tmp_path, [], f"[server]\n{name} = {bad}\n")
    with pytest.raises(ValueError, match=f"{name}.*{why}"):
        ServerConfig(**{name: bad})


def test_room_caps_at_their_bounds_are_accepted(tmp_path: Path) -> None:
    edge = configured(tmp_path, ["--max-bans-per-room", str(MAX_BANS_LISTED), "--max-rooms-per-user", "1"])
    assert (edge.max_bans_per_room, edge.max_rooms_per_user) == (MAX_BANS_LISTED, 1)
    assert ServerConfig(autojoin=("#a", "#b"), max_rooms=2).max_rooms == 2
    assert ServerConfig(autojoin=(), max_rooms=1).max_rooms == 1


def test_fewer_rooms_allowed_than_autojoin_rooms_is_refused(tmp_path: Path) -> None:
    # Autojoin rooms always exist, so a cap below their count could never be met.
    why = "max_rooms: 2 is fewer than the 3 autojoin rooms"
    with pytest.raises(ValueError, match=why):
        ServerConfig(autojoin=("#a", "#b", "#c"), max_rooms=2)
    with pytest.raises(UsageError, match=why):
        configured(tmp_path, ["--autojoin", "#a,#b,#c", "--max-rooms", "2"])
    with pytest.raises(UsageError, match=why):
        configured(tmp_path, [], '[server]\nautojoin = ["#a", "#b", "#c"]\nmax_rooms = 2\n')


def test_the_docs_settings_table_is_the_generated_one() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    found = re.search(r"<!-- settings table: begin.*?-->\n\n(.*?)\n<!-- settings table: end -->", text, re.S)
    assert found, "docs/operations.md lost its settings table markers"
    assert found.group(1) == settings_table(), (
        "docs/operations.md's settings table is out of date: replace it with the output of "
        ".venv/bin/python -c 'from securechat.cli.server_cmd import settings_table; "
        'print(settings_table(), end="")\''
    )


def test_the_default_port_is_defined_once() -> None:
    assert ServerConfig().port == DEFAULT_PORT
    # No other literal of it in the code: the client, the command line and the server
    # settings all import securechat.ports.
    pattern = re.compile(rf"\b{DEFAULT_PORT}\b")
    elsewhere = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "securechat").rglob("*.py"))
        if path.name != "ports.py" and pattern.search(path.read_text())
    ]
    assert elsewhere == []


def pyproject_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def test_the_version_is_pyprojects(capsys: pytest.CaptureFixture[str]) -> None:
    # The installed metadata is what pyproject.toml said at `pip install -e .`: a stale
    # install shows here, not as a wrong version in someone's welcome.
    assert __version__ == VERSION == pyproject_version()
    assert f"securechat {VERSION}" == SOFTWARE
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"securechat {pyproject_version()}\n"


def test_version_as_a_real_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "securechat", "--version"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, f"securechat {pyproject_version()}\n")


def test_the_version_of_an_uninstalled_tree_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert _installed_version() == UNKNOWN_VERSION == "0+unknown"
