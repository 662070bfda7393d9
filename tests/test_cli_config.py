from __future__ import annotations

from pathlib import Path

import pytest

from securechat.cli import main


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
    ],
)
def test_mistakes_in_the_file_are_clear_errors(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write(tmp_path / "c.toml", text)
    assert main(["--config", str(cfg), "client"]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_explicit_config_file_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tmp_path / "none.toml"), "client"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["client", "--config"]) == 2
