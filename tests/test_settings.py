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
        ({"RELATIVE_RELEVANCE": "1.5"}, "RELATIVE_RELEVANCE=1.5 must be from 0"),
        ({"EXPANSION_WEIGHT": "-0.5"}, "EXPANSION_WEIGHT=-0.5 must be from 0 \\(off\\) to below 1"),
        ({"EXPANSION_WEIGHT": "1"}, "EXPANSION_WEIGHT=1.0 must be from 0"),
        ({"ARCHIVE_LINK_DAYS": "90"},
         "ARCHIVE_LINK_DAYS=90 is longer than RETENTION_DELIVERY_ITEMS_DAYS=60"),
        ({"ARCHIVE_LINK_DAYS": "0"}, "ARCHIVE_LINK_DAYS=0 must be at least 1"),
        ({"FIRST_DIGEST": "later"}, "FIRST_DIGEST='later' is not one of offer, send, off"),
        ({"WEEKLY_PAPERS_PER_DIGEST": "0"}, "WEEKLY_PAPERS_PER_DIGEST=0 must be from 1 to 50"),
        ({"DEFAULT_PAPERS_PER_DIGEST": "51"}, "DEFAULT_PAPERS_PER_DIGEST=51 must be from 1 to 50"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env, env_file=None)


def test_generated_secret_key_is_stable_and_private(tmp_path: Path) -> None:
    s = Settings.from_env({"DATA_DIR": str(tmp_path)}, env_file=None)
    assert s.signing_key() == s.signing_key()
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0


SHARED_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def test_a_shared_database_without_secret_key_is_refused_with_what_to_set(
    tmp_path: Path,
) -> None:
    s = Settings.from_env({"DATA_DIR": str(tmp_path), "DATABASE_URL": SHARED_DATABASE},
                          env_file=None)
    with pytest.raises(SettingsError, match="Set SECRET_KEY to one long random value"):
        s.signing_key()
    assert not (tmp_path / "secret_key").exists()  # no private key that others would not have
    keyed = Settings.from_env({"DATA_DIR": str(tmp_path), "DATABASE_URL": SHARED_DATABASE,
                               "SECRET_KEY": "shared"}, env_file=None)
    assert keyed.signing_key() == "shared"


def test_the_web_app_refuses_to_start_without_the_shared_key(tmp_path: Path) -> None:
    from digest.web import create_app

    s = Settings.from_env({"DATA_DIR": str(tmp_path), "DATABASE_URL": SHARED_DATABASE},
                          env_file=None)
    with pytest.raises(SettingsError, match="SECRET_KEY"):
        create_app(s)


@pytest.mark.parametrize("role", ["worker", "beat"])
def test_a_worker_and_beat_refuse_to_start_without_the_shared_key(
    tmp_path: Path, role: str
) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env.update(DATA_DIR=str(tmp_path), DATABASE_URL=SHARED_DATABASE,
               CELERY_BROKER_URL="redis://127.0.0.1:6379/7")
    args = ["worker", "--without-gossip", "--without-mingle", "-c", "1"] if role == "worker" \
        else ["beat", f"--schedule={tmp_path / 'schedule'}"]
    celery = Path(sys.executable).parent / "celery"
    done = subprocess.run([str(celery), "-A", "workers", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Set SECRET_KEY to one long random value" in done.stdout + done.stderr
