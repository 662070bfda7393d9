from __future__ import annotations

from pathlib import Path

import pytest

from securechat.cli import build_parser, main
from securechat.cli.config import apply_config
from securechat.cli.server_cmd import server_config


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_client_settings_become_defaults_and_flags_override_them(
    tmp_path: Path, cert_files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path / "c.toml", f'[client]\nnick = "alice"\nport = 1\ncafile = "{cert_files["ca"]}"\n')
    # `send` fails at once where nothing listens (a chat client would wait for the server).
    assert main(["--config", str(cfg), "send", "--guest", "--room", "hi"]) == 1
    assert "cannot connect to 127.0.0.1:1" in capsys.readouterr().err
    assert main(["send", "--guest", "--room", "--port", "2", "--config", str(cfg), "hi"]) == 1
    assert "cannot connect to 127.0.0.1:2" in capsys.readouterr().err


def test_the_default_file_is_found_through_xdg(
    tmp_path: Path,
    cert_files: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "securechat").mkdir()
    write(tmp_path / "securechat" / "config.toml", f'[client]\nport = 3\ncafile = "{cert_files["ca"]}"\n')
    assert main(["send", "--guest", "--nick", "bob", "--room", "hi"]) == 1
    assert "127.0.0.1:3" in capsys.readouterr().err


def test_server_settings_apply_to_the_server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write(tmp_path / "c.toml", '[server]\ncert = "~/no/such/cert.pem"\nkey = "/no/such.key"\n')
    assert main(["--config", str(cfg), "server"]) == 2
    assert str(Path("~/no/such/cert.pem").expanduser()) in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[client]\nnikc = 'alice'\n", "unknown setting 'nikc'"),
        ("[client]\nport = '7443'\n", "port must be a whole number"),
        ("[client]\ncolor = 'no'\n", "color must be true or false"),
        ("[clients]\n", "unknown section [clients]"),
        ("[client\n", "not valid TOML"),
        ("client = 1\n", "must be a [section]"),
        # [server] takes every ServerConfig setting, by its field name and type.
        (
            "[server]\nmessage_rte = 1\n",
            "unknown setting 'message_rte' in [server] (did you mean 'message_rate'?)",
        ),
        ("[server]\nmax_rooms = 'ten'\n", "[server] max_rooms must be a whole number"),
        ("[server]\nping_interval = true\n", "[server] ping_interval must be a number"),
        ("[server]\nautojoin = '#lobby'\n", "[server] autojoin must be a list of strings"),
        ("[server]\nautojoin = ['#lobby', 'help']\n", "[server] autojoin: 'help' is not a room name"),
        ("[server]\ninit_data_dir = true\n", "unknown setting 'init_data_dir'"),
    ],
)
def test_mistakes_in_the_file_are_clear_errors(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path / "c.toml", text)
    assert main(["--config", str(cfg), "client"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert str(cfg) in err  # the error names the file


def test_every_server_setting_in_the_file_reaches_the_server(tmp_path: Path) -> None:
    # Before, [server] knew 9 keys and refused the rest: max_rooms here was "unknown".
    cfg = write(tmp_path / "c.toml", '[server]\nmax_rooms = 5\nautojoin = ["#a"]\ncert = "/no/such.pem"\n')
    parser, commands = build_parser()
    apply_config(cfg, commands)
    config = server_config(parser.parse_args(["server"]))
    assert (config.max_rooms, config.autojoin) == (5, ("#a",))


def test_a_missing_explicit_config_file_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tmp_path / "none.toml"), "client"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["client", "--config"]) == 2
