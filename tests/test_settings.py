"""Settings come from the environment and .env, and .env.example documents every one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from digest.settings import PROJECT_DIR, Settings, SettingsError, setting_names


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    text = (PROJECT_DIR / ".env.example").read_text()
    documented = re.findall(r"^([A-Z][A-Z0-9_]+)=", text, flags=re.M)
    assert sorted(documented) == sorted(setting_names())


def test_embedded_default_is_sqlite_under_data_dir_with_a_file_outbox(tmp_path: Path) -> None:
    s = Settings.from_env({"DATA_DIR": str(tmp_path)}, env_file=None)
    assert s.database_url == f"sqlite:///{tmp_path.as_posix()}/digest.sqlite3"
    assert s.mail_backend == "file" and s.outbox_dir == tmp_path / "outbox"


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("MAIL_BACKEND=smtp\nSMTP_PORT=2525\nBATCH_SIZE=7\n")
    s = Settings.from_env({"BATCH_SIZE": "9"}, env_file=env)
    assert (s.mail_backend, s.smtp_port, s.batch_size) == ("smtp", 2525, 9)


def test_postgres_needs_no_code_change() -> None:
    url = "postgresql+psycopg://u@127.0.0.1:5432/x"
    assert Settings.from_env({"DATABASE_URL": url}, env_file=None).database_url == url


@pytest.mark.parametrize(
    "env, message",
    [
        ({"SMTP_PORT": "twenty-five"}, "SMTP_PORT"),
        ({"MAIL_BACKEND": "pigeon"}, "MAIL_BACKEND"),
        ({"SMTP_SECURITY": "ssl3"}, "SMTP_SECURITY"),
        ({"DEFAULT_SEND_HOUR": "25"}, "DEFAULT_SEND_HOUR"),
        ({"TRENDING_BOOST": "-1"}, "TRENDING_BOOST=-1.0 would give trending papers no score"),
        ({"MIN_RELEVANCE": "1.5"}, "MIN_RELEVANCE=1.5 must be from 0"),
        ({"MIN_RELEVANCE": "-0.1"}, "MIN_RELEVANCE"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env, env_file=None)


def test_generated_secret_key_is_stable_and_private(tmp_path: Path) -> None:
    s = Settings.from_env({"DATA_DIR": str(tmp_path)}, env_file=None)
    assert s.signing_key() == s.signing_key()
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
