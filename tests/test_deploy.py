"""deploy/: the compose file, the systemd units and the Dockerfile name only things that exist.

No Docker engine runs here, so compose.yaml is checked by reading it: services, health checks,
start order, variables, and that every command resolves to a console script, subcommand and
option installed in this virtualenv (with the `deploy` extra). The systemd units also go through
`systemd-analyze verify` when it is installed.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from dotenv import dotenv_values
from sqlalchemy.engine import make_url

from digest import cli
from digest.settings import PROJECT_DIR, Settings, setting_names

DEPLOY_DIR = PROJECT_DIR / "deploy"
UNITS_DIR = DEPLOY_DIR / "systemd"
VENV_BIN = Path(sys.executable).parent
UNIT_VENV_BIN = "/opt/paper-digest/.venv/bin/"
UNIT_DATA_DIR = "/var/lib/paper-digest"

APP_SERVICES = ("migrate", "web", "worker", "beat", "flower")
UNITS = ("migrate", "web", "worker", "beat", "flower")
PROGRAMS = ("digest", "celery", "gunicorn")

# Variables the official postgres image reads, and Compose's own; anything else in compose.yaml
# must be a setting, or it is a typo the app would silently ignore.
POSTGRES_VARIABLES = {
    "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "POSTGRES_INITDB_ARGS",
    "POSTGRES_INITDB_WALDIR", "POSTGRES_HOST_AUTH_METHOD", "PGDATA",
}
COMPOSE_VARIABLES = {
    "COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "COMPOSE_PROFILES", "COMPOSE_ENV_FILES",
    "DOCKER_DEFAULT_PLATFORM",
}
KNOWN_VARIABLES = set(setting_names()) | POSTGRES_VARIABLES | COMPOSE_VARIABLES


# --- reading the files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY_DIR / "compose.yaml").read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are CamelCase
    parser.read_string((UNITS_DIR / f"paper-digest-{name}.service").read_text())
    return parser


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    lines = [
        line for line in (DEPLOY_DIR / "Dockerfile").read_text().splitlines()
        if not line.lstrip().startswith("#")
    ]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def interpolate(value: str, environ: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR-default}, enough for our file."""

    def substitute(match: re.Match[str]) -> str:
        name, op, default = match.group(1), match.group(2), match.group(3) or ""
        if op == ":-":
            return environ.get(name) or default
        if op == "-":
            return environ.get(name, default)
        return environ.get(name, "")

    return re.sub(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|-)([^}]*))?\}", substitute, value)


def app_environment(service: dict[str, Any], environ: dict[str, str]) -> dict[str, str]:
    """What a container sees: .env.example (standing in for .env) overlaid by `environment:`."""
    env = {k: v or "" for k, v in dotenv_values(PROJECT_DIR / ".env.example").items()}
    env.update({k: interpolate(str(v), environ) for k, v in service["environment"].items()})
    return env


def command_of(source: str, name: str) -> list[str]:
    """The argv a compose service, a systemd unit or the image's CMD runs."""
    if source == "compose":
        command = yaml.safe_load((DEPLOY_DIR / "compose.yaml").read_text())["services"][name][
            "command"
        ]
        return command if isinstance(command, list) else shlex.split(command)
    if source == "systemd":
        exec_start = read_unit(name)["Service"]["ExecStart"]
        assert exec_start.startswith(UNIT_VENV_BIN), (
            f"paper-digest-{name}.service: ExecStart must run a program from {UNIT_VENV_BIN}"
        )
        return shlex.split(exec_start.removeprefix(UNIT_VENV_BIN))
    (cmd,) = [args for keyword, args in dockerfile_instructions() if keyword == "CMD"]
    return json.loads(cmd)  # type: ignore[no-any-return]


# --- every command names something that exists ------------------------------------------


def check_digest(args: list[str]) -> None:
    """Walk `digest` subcommands, then let click parse the options of the command reached."""
    command: click.Command = cli.main
    path = ["digest"]
    words = list(args)
    while isinstance(command, click.Group) and words and not words[0].startswith("-"):
        name = words.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, f"`{' '.join(path)}` has no subcommand {name!r}"
        command, path = sub, [*path, name]
    assert not isinstance(command, click.Group), f"`{' '.join(path)}` is a group, not a command"
    command.make_context(" ".join(path), words)  # raises UsageError on an unknown option


def check_gunicorn(args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """gunicorn's own parser accepts the options; the app spec loads a Flask app that is healthy."""
    from flask import Flask
    from gunicorn.config import Config
    from gunicorn.util import import_app

    parsed = Config().parser().parse_args(args)
    assert len(parsed.args) == 1, f"gunicorn needs exactly one app spec, got {parsed.args}"
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no stray .env
    app = import_app(parsed.args[0])
    assert isinstance(app, Flask)
    assert app.test_client().get("/healthz").status_code == 200


def check_celery(args: list[str]) -> None:
    """`-A workers`, a celery subcommand that exists, and options that subcommand knows."""
    from celery.bin.celery import celery as celery_group

    words = list(args)
    app_name = None
    while words and words[0].startswith("-"):
        word = words.pop(0)
        if word in ("-A", "--app"):
            app_name = words.pop(0)
        elif word.startswith("--app="):
            app_name = word.partition("=")[2]
    assert app_name == "workers", f"celery must be started with -A workers, not {app_name!r}"
    assert words, "celery without a subcommand"
    name, options = words[0], words[1:]
    assert name in celery_group.commands, f"celery has no subcommand {name!r}"
    if name == "flower":  # flower hands its options to tornado's parser
        from flower.options import options as flower_options

        known = {o.lstrip("-").partition("=")[0] for o in options}
        assert all(o in flower_options for o in known), f"unknown flower option in {options}"
        return
    known = {opt for p in celery_group.commands[name].params for opt in p.opts + p.secondary_opts}
    for option in options:
        if option.startswith("-"):
            assert option.partition("=")[0] in known, f"celery {name} has no option {option}"


@pytest.mark.parametrize(
    "source, name",
    [("compose", s) for s in APP_SERVICES]
    + [("systemd", u) for u in UNITS]
    + [("Dockerfile", "CMD")],
)
def test_every_command_names_something_installed(
    source: str, name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    argv = command_of(source, name)
    program, args = argv[0], argv[1:]
    assert program in PROGRAMS, f"{source} {name}: unexpected program {program!r}"
    assert os.access(VENV_BIN / program, os.X_OK), (
        f"{program} is not in {VENV_BIN}; pip install -e '.[deploy]'"
    )
    if program == "digest":
        check_digest(args)
    elif program == "gunicorn":
        check_gunicorn(args, monkeypatch, tmp_path)
    else:
        check_celery(args)


def test_celery_commands_load_the_workers_app() -> None:
    """`celery -A workers` needs a `workers` package with a Celery `app` and a beat schedule."""
    from celery import Celery

    spec = importlib.util.find_spec("workers")
    if spec is None or spec.origin is None:  # an empty workers/ is only a namespace package
        pytest.fail(
            "workers package missing: `celery -A workers ...` in deploy/ needs workers/__init__.py "
            "defining a Celery `app`"
        )
    workers = importlib.import_module("workers")
    assert isinstance(getattr(workers, "app", None), Celery), "workers has no Celery `app`"
    assert workers.app.conf.beat_schedule, "workers.app has no beat schedule: beat would idle"


# --- compose ----------------------------------------------------------------------------


def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"postgres", "redis", *APP_SERVICES}


def test_app_services_share_one_image_and_one_configuration(compose: dict[str, Any]) -> None:
    (data_dir,) = [a.partition("=")[2] for k, a in dockerfile_instructions()
                   if k == "ENV" and a.startswith("DATA_DIR=")]
    for name in APP_SERVICES:
        service = compose["services"][name]
        build = service["build"]
        context = (DEPLOY_DIR / build["context"]).resolve()
        assert context == PROJECT_DIR
        assert (context / build["dockerfile"]).resolve() == DEPLOY_DIR / "Dockerfile"
        assert (DEPLOY_DIR / service["env_file"]).resolve() == PROJECT_DIR / ".env"
        env = app_environment(service, {})
        assert make_url(env["DATABASE_URL"]).host == "postgres"
        assert env["REDIS_URL"].startswith("redis://redis:")
        # .env.example says DATA_DIR=data (for running outside Docker); the container must not.
        assert env["DATA_DIR"] == data_dir
        assert any(v.endswith(f":{data_dir}") for v in service["volumes"]), (
            f"{name}: web and workers share DATA_DIR (generated secret key), mount a volume there"
        )


def test_settings_accept_the_container_environment(compose: dict[str, Any]) -> None:
    env = app_environment(compose["services"]["worker"], {})
    settings = Settings.from_env(env, env_file=None)
    assert make_url(settings.database_url).host == "postgres"
    assert settings.celery_broker_url == "redis://redis:6379/0"
    assert settings.data_dir == Path("/data")


@pytest.mark.parametrize("password", [None, "s3cret-from-the-shell"])
def test_database_url_matches_the_postgres_service(
    compose: dict[str, Any], password: str | None
) -> None:
    environ = {} if password is None else {"POSTGRES_PASSWORD": password}
    postgres = {k: interpolate(str(v), environ)
                for k, v in compose["services"]["postgres"]["environment"].items()}
    url = make_url(app_environment(compose["services"]["web"], environ)["DATABASE_URL"])
    assert (url.username, url.password, url.database) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"]
    )
    assert password is None or url.password == password


def test_postgres_and_redis_have_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


def test_web_healthcheck_asks_healthz_on_the_port_gunicorn_binds(compose: dict[str, Any]) -> None:
    web = compose["services"]["web"]
    check = " ".join(web["healthcheck"]["test"])
    port = command_of("compose", "web")[command_of("compose", "web").index("--bind") + 1]
    assert f"http://127.0.0.1:{port.rpartition(':')[2]}/healthz" in check
    assert port.startswith("0.0.0.0:"), "gunicorn must listen beyond the container's loopback"


def test_start_order(compose: dict[str, Any]) -> None:
    """Migrate waits for a healthy database; whatever uses the schema waits for migrate."""
    depends = {name: s.get("depends_on", {}) for name, s in compose["services"].items()}
    expected_condition = {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    for name, deps in depends.items():
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions (long syntax)"
        for dep, spec in deps.items():
            assert spec["condition"] == expected_condition[dep], f"{name} -> {dep}"
    assert set(depends["migrate"]) == {"postgres"}
    for name in ("web", "worker", "beat"):
        assert "migrate" in depends[name], f"{name} must start after the migration"
    for name in ("worker", "beat", "flower"):
        assert "redis" in depends[name], f"{name} needs the broker"
    assert compose["services"]["migrate"]["restart"] == "no"


def test_exactly_one_beat(compose: dict[str, Any]) -> None:
    assert compose["services"]["beat"].get("deploy", {}).get("replicas", 1) == 1


def test_compose_uses_only_known_variables(compose: dict[str, Any]) -> None:
    text = (DEPLOY_DIR / "compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    for service in compose["services"].values():
        used |= set(service.get("environment", {}))
    assert used - KNOWN_VARIABLES == set()


def test_beat_schedule_file_is_in_a_writable_place(compose: dict[str, Any]) -> None:
    compose_beat = command_of("compose", "beat")
    unit_beat = command_of("systemd", "beat")
    assert any(a.startswith("--schedule=/data/") for a in compose_beat)
    assert any(a.startswith(f"--schedule={UNIT_DATA_DIR}/") for a in unit_beat)


# --- systemd ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNITS)
def test_unit_runs_as_its_user_from_the_venv_with_hardening(name: str) -> None:
    unit = read_unit(name)
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    assert service["ExecStart"].startswith(UNIT_VENV_BIN)
    assert service["EnvironmentFile"] == "/etc/paper-digest/env"
    assert service["WorkingDirectory"] == "/opt/paper-digest"
    assert service["User"] == "paper-digest"
    assert service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict"
    assert service["PrivateTmp"] == "yes"
    assert UNIT_DATA_DIR in service["ReadWritePaths"].split()
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    if name == "migrate":
        assert service["Type"] == "oneshot"
    else:
        assert service["Restart"] == "on-failure"
        assert "paper-digest-migrate.service" in unit["Unit"]["After"].split()


@pytest.mark.parametrize("name", ["web", "worker", "beat"])
def test_schema_users_require_the_migration(name: str) -> None:
    assert "paper-digest-migrate.service" in read_unit(name)["Unit"]["Requires"].split()


def test_worker_shuts_down_warm() -> None:
    """SIGTERM to the main process only is Celery's warm shutdown; give it time to finish."""
    service = read_unit("worker")["Service"]
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"
    assert int(service["TimeoutStopSec"]) >= 60


@pytest.mark.parametrize("name", UNITS)
def test_unit_environment_names_settings(name: str) -> None:
    service = read_unit(name)["Service"]
    names = {pair.partition("=")[0] for pair in shlex.split(service.get("Environment", ""))}
    assert names <= set(setting_names())
    assert f"DATA_DIR={UNIT_DATA_DIR}" in service.get("Environment", "")


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    """Runs without a running systemd; ExecStart is pointed at this venv so binaries resolve."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed here")
    for name in UNITS:
        unit = f"paper-digest-{name}.service"
        text = (UNITS_DIR / unit).read_text().replace(UNIT_VENV_BIN, f"{VENV_BIN}/")
        (tmp_path / unit).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *sorted(str(p) for p in tmp_path.glob("*.service"))],
        capture_output=True, text=True, timeout=60, check=False,
    )
    # Unknown keys are only warnings (exit 0), so any output at all is a failure.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )


# --- documentation and the image --------------------------------------------------------


def test_env_example_names_only_settings() -> None:
    """Including the commented-out examples (test_settings checks the other direction)."""
    text = (PROJECT_DIR / ".env.example").read_text()
    mentioned = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", text, flags=re.M))
    assert mentioned - set(setting_names()) == set()


def test_deploy_readme_names_only_known_variables() -> None:
    text = (DEPLOY_DIR / "README.md").read_text()
    assert set(re.findall(r"\b([A-Z][A-Z0-9_]+)=", text)) - KNOWN_VARIABLES == set()


def test_dockerfile_installs_the_deploy_extra_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    installs = [a for k, a in instructions if k == "RUN" and "pip install" in a]
    assert any("[deploy]" in a for a in installs)
    # templates/ is read from beside the digest package, so the install must stay in the tree.
    assert any("--editable" in a or " -e " in a for a in installs)
    users = [a for k, a in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("ENV", "DATA_DIR=/data") in instructions
    copied = {a.split()[0] for k, a in instructions if k == "COPY"}
    assert {"digest", "workers", "templates", "pyproject.toml"} <= copied


def test_dockerfile_bakes_in_no_secret() -> None:
    instructions = dockerfile_instructions()
    for keyword, args in instructions:
        if keyword in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN|API_KEY)[A-Z_]*\s*=\s*\S", args), args
        if keyword == "COPY":
            sources = args.split()[:-1]
            assert "." not in sources and not any(".env" in s for s in sources), args
    ignore = (DEPLOY_DIR / "Dockerfile.dockerignore").read_text().splitlines()
    assert ".env" in ignore and ".venv" in ignore
