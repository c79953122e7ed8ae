"""The Procfile, docker-compose.yml and Dockerfile name processes that can actually start.

No Docker engine is needed: every command those files name is resolved in this virtualenv (where
``pip install -e .`` put the same console scripts the image gets from ``pip install .``), the
module it names is imported, and ``<command> --help`` must exit 0. Each runs in an empty
directory, so a module that only imports from the source tree, not from the installed package,
fails here as it would in the image, and with the environment a deployment gives it
(``deployment_env``: its own admin token and secret key, no development defaults). The compose
file is also checked for consistency: what depends on what, that the processes share one database
and one broker, and that it demands the two secrets. And the serving processes (API, worker,
beat) are started for real without those secrets: each must refuse, saying what to set.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography.fernet import Fernet

from devstack.processes import free_port
from shared.config import Settings

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PROCFILE = ROOT / "Procfile"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

# Services that do the system's work; they must share one database and one broker.
APP_SERVICES = ("api", "worker", "beat")
EXPECTED_QUEUES = {
    Settings.model_fields[name].default
    for name in ("export_queue", "report_queue", "maintenance_queue")
}

_DEFAULT_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")


def expand(text: str) -> str:
    """``${NAME:-default}`` -> default, as a shell or Compose does when NAME is unset."""
    text = _DEFAULT_VAR.sub(lambda m: m.group(2), text).replace("$$", "$")
    assert "$" not in text, f"a variable without a default in {text!r}: give it one"
    return text


def procfile() -> dict[str, str]:
    entries = {}
    for line in PROCFILE.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


@functools.cache
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def compose_argv(service: dict) -> list[str]:
    command = service["command"]
    if isinstance(command, str):
        return shlex.split(expand(command))
    return [expand(str(arg)) for arg in command]


def dockerfile_cmd() -> list[str]:
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD ")]
    assert lines, "the Dockerfile has no CMD"
    return json.loads(lines[-1][len("CMD "):])


def processes() -> list[tuple[str, list[str]]]:
    found = [(f"Procfile:{name}", shlex.split(expand(cmd))) for name, cmd in procfile().items()]
    found += [
        (f"docker-compose:{name}", compose_argv(service))
        for name, service in compose()["services"].items()
        if "command" in service and "build" in service  # our image; redis/postgres are not ours
    ]
    found.append(("Dockerfile:CMD", dockerfile_cmd()))
    return found


def startup_check(argv: list[str]) -> tuple[list[str], str | None]:
    """The command that proves ``argv`` can start, and the ``module:attr`` it serves, if any.

    The check is the whole command with ``--help`` appended: the options are parsed as they will
    be at start-up (an unknown option, or Flower's ``--port`` without ``=``, fails here), and then
    the help stops it before it would serve anything.
    """
    exe = argv[0]
    if exe == "uvicorn":
        return [*argv, "--help"], next(a for a in argv[1:] if not a.startswith("-"))
    if exe == "celery":
        app = next((argv[i + 1] for i, a in enumerate(argv) if a in ("-A", "--app")), None)
        assert app, f"celery without -A: {argv}"
        return [*argv, "--help"], app
    if exe == "aic" or (exe in ("python", "python3") and argv[1] == "-m"):
        return [*argv, "--help"], None
    raise AssertionError(f"no start-up check for {exe!r}; teach startup_check() about it")


def resolve(exe: str) -> str:
    if exe in ("python", "python3"):
        return sys.executable
    path = shutil.which(exe, path=str(VENV_BIN))
    assert path, f"{exe} is not installed in {VENV_BIN}: is it a dependency in pyproject.toml?"
    return path


def base_env(cwd: Path) -> dict[str, str]:
    """This environment without any AIC_ variable (the tests' own included), on a database in
    ``cwd`` and a broker port where nothing listens: whatever starts reaches nothing shared."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIC_")}
    env["AIC_DATABASE_URL"] = f"sqlite:///{cwd / 'deployment-check.db'}"
    env["AIC_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    return env


@functools.cache
def deployment_env(cwd: Path) -> tuple[tuple[str, str], ...]:
    """What a deployment must give every process: production, its own admin token and key."""
    return tuple({**base_env(cwd), "AIC_ENVIRONMENT": "production",
                  "AIC_ADMIN_TOKEN": secrets.token_urlsafe(32),
                  "AIC_SECRET_KEY": Fernet.generate_key().decode()}.items())


@functools.cache
def run_in_empty_dir(argv: tuple[str, ...], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [resolve(argv[0]), *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=120,
        env=dict(deployment_env(cwd)),
    )


@pytest.fixture(scope="module")
def empty_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cwd")


PROCESSES = processes()


@pytest.mark.parametrize("origin,argv", PROCESSES, ids=[origin for origin, _ in PROCESSES])
def test_process_can_start(origin: str, argv: list[str], empty_dir: Path) -> None:
    help_argv, app = startup_check(argv)
    if app is not None:
        module, _, attr = app.partition(":")
        code = f"import importlib; getattr(importlib.import_module({module!r}), {attr or 'app'!r})"
        imported = run_in_empty_dir(("python", "-c", code), empty_dir)
        assert imported.returncode == 0, f"{origin}: cannot load {app}:\n{imported.stderr[-3000:]}"
    result = run_in_empty_dir(tuple(help_argv), empty_dir)
    assert result.returncode == 0, (
        f"{origin}: `{shlex.join(help_argv)}` exited {result.returncode}:\n"
        f"{(result.stderr or result.stdout)[-3000:]}"
    )
    if argv[0] == "celery" and "flower" in argv:
        # Flower passes its options to tornado only after click has handled --help, so parse them
        # the way Flower does (tornado wants --name=value; `--port 5555` fails at start-up).
        options = ["flower", *argv[argv.index("flower") + 1:]]
        code = ("import flower.options, tornado.options; "
                f"tornado.options.parse_command_line({options!r})")
        parsed = run_in_empty_dir(("python", "-c", code), empty_dir)
        assert parsed.returncode == 0, (
            f"{origin}: Flower refuses its options:\n{parsed.stderr[-2000:]}"
        )


def serves(argv: list[str]) -> bool:
    """The API, a Celery worker or beat: the processes that must refuse development secrets."""
    return argv[0] == "uvicorn" or (argv[0] == "celery" and ("worker" in argv or "beat" in argv))


def local_argv(argv: list[str], cwd: Path) -> tuple[str, ...]:
    """``argv`` with its port and beat schedule moved to a free port and ``cwd``: a process that
    did start must not take a port or a file someone else on this machine uses."""
    out: list[str] = []
    rest = iter(argv)
    for arg in rest:
        if arg in ("--port", "--schedule"):
            next(rest)
            out += [arg, str(free_port()) if arg == "--port" else str(cwd / "beat-schedule")]
        elif arg.startswith("--port="):
            out.append(f"--port={free_port()}")
        else:
            out.append(arg)
    return tuple(out)


SERVING = [(origin, argv) for origin, argv in PROCESSES if serves(argv)]


@pytest.mark.parametrize("origin,argv", SERVING, ids=[origin for origin, _ in SERVING])
def test_serving_process_refuses_the_development_secrets(origin: str, argv: list[str],
                                                         empty_dir: Path) -> None:
    """Started for real (not ``--help``) with neither AIC_ADMIN_TOKEN, AIC_SECRET_KEY nor
    AIC_ENVIRONMENT set, each must exit non-zero at once, naming both variables and the way out.

    Fails on the code before the check: uvicorn serves, the worker retries the (closed) broker
    port and beat ticks, each until the timeout, which fails the test."""
    command = local_argv(argv, empty_dir)
    result = subprocess.run([resolve(command[0]), *command[1:]], cwd=empty_dir,
                            env=base_env(empty_dir), capture_output=True, text=True, timeout=90)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"{origin} started with the development secrets:\n{output}"
    assert "refuses to start" in output, output[-3000:]
    assert "AIC_ADMIN_TOKEN is the development default" in output, output[-3000:]
    assert "AIC_SECRET_KEY is the development key" in output, output[-3000:]
    assert "AIC_ENVIRONMENT=development" in output, output[-3000:]


def test_development_environment_accepts_the_development_secrets(empty_dir: Path) -> None:
    """The way out the refusal names works: ``make run``'s children get it (devstack.stack)."""
    code = "import producers.api.app as m; assert m.app.title"
    result = subprocess.run([sys.executable, "-c", code], cwd=empty_dir, capture_output=True,
                            text=True, timeout=120,
                            env={**base_env(empty_dir), "AIC_ENVIRONMENT": "development"})
    assert result.returncode == 0, result.stderr[-3000:]


def test_compose_demands_both_secrets() -> None:
    """No fallback to the development defaults: Compose stops with the message when unset."""
    for name in (*APP_SERVICES, "migrate"):
        environment = compose()["services"][name]["environment"]
        for variable in ("AIC_ADMIN_TOKEN", "AIC_SECRET_KEY"):
            value = str(environment.get(variable))
            assert re.fullmatch(r"\$\{" + variable + r":\?set " + variable + r" .+\}", value), (
                f"{name}: {variable} must be ${{{variable}:?set {variable} ...}}, not {value!r}")


def test_procfile_names_every_process_type() -> None:
    entries = procfile()
    assert {"release", "web", "worker", "beat"} <= set(entries)
    assert entries["release"].split() == ["aic", "migrate"]
    assert "$PORT" in entries["web"] or "${PORT" in entries["web"], "web must listen on $PORT"


@pytest.mark.parametrize("origin,argv", [
    (origin, argv) for origin, argv in PROCESSES
    if argv[0] == "celery" and "worker" in argv
])
def test_worker_consumes_every_queue(origin: str, argv: list[str]) -> None:
    queues = set(argv[argv.index("-Q") + 1].split(","))
    assert queues == EXPECTED_QUEUES, f"{origin} consumes {queues}, tasks go to {EXPECTED_QUEUES}"


def test_compose_dependencies_name_services() -> None:
    services = compose()["services"]
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        for dependency in depends:
            assert dependency in services, f"{name} depends on unknown service {dependency!r}"
            if isinstance(depends, dict):
                condition = depends[dependency].get("condition")
                if condition == "service_healthy":
                    assert "healthcheck" in services[dependency], (
                        f"{name} waits for {dependency} to be healthy, which has no healthcheck"
                    )


def test_compose_app_services_share_database_and_broker() -> None:
    services = compose()["services"]
    envs = {name: services[name]["environment"] for name in (*APP_SERVICES, "migrate", "flower")}
    database = {envs[name]["AIC_DATABASE_URL"] for name in (*APP_SERVICES, "migrate")}
    broker = {envs[name]["AIC_REDIS_URL"] for name in (*APP_SERVICES, "flower")}
    assert len(database) == 1, f"api/worker/beat/migrate use different databases: {database}"
    assert len(broker) == 1, f"api/worker/beat/flower use different brokers: {broker}"
    # The URLs point at services of this file.
    assert urlsplit(database.pop()).hostname in services
    assert urlsplit(broker.pop()).hostname in services


def test_compose_migrations_run_before_the_app() -> None:
    services = compose()["services"]
    assert compose_argv(services["migrate"]) == ["aic", "migrate"]
    postgres = services["migrate"]["depends_on"]
    assert postgres["postgres"]["condition"] == "service_healthy"
    for name in APP_SERVICES:
        depends = services[name].get("depends_on") or {}
        assert isinstance(depends, dict) and "migrate" in depends, f"{name} ignores migrate"
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"].get("restart", "no") == "no", "a finished migrate must not restart"


def test_compose_redis_persists_the_queue() -> None:
    redis = compose()["services"]["redis"]
    argv = redis["command"] if isinstance(redis["command"], list) else redis["command"].split()
    assert argv[argv.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_dockerfile_copies_every_package() -> None:
    """A package the wheel should hold but the build context lacks would vanish from the image."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in patterns}
    copied = set(re.findall(r"^COPY\s+(\S+)\s", DOCKERFILE.read_text(), flags=re.M))
    missing = {p for p in packages if p not in copied}
    assert not missing, f"the Dockerfile does not COPY {sorted(missing)}"
    assert {"pyproject.toml", "README.md"} <= copied
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert not (packages | {"pyproject.toml", "README.md"}) & ignored


def test_readme_documents_every_setting() -> None:
    """Operators configure the deployment from the README's table: it must name every variable."""
    readme = (ROOT / "README.md").read_text()
    variables = [f"AIC_{name.upper()}" for name in Settings.model_fields]
    missing = [variable for variable in variables if f"`{variable}`" not in readme]
    assert not missing, f"README.md's configuration table lacks {missing}"


def test_compose_starts_the_sandboxes_only_when_asked() -> None:
    """A production `docker compose up` runs no simulator of a vendor (they accept any token)."""
    services = compose()["services"]
    sandboxes = {name for name, service in services.items()
                 if "command" in service
                 and any("sandbox." in arg for arg in compose_argv(service))}
    assert sandboxes, "the compose file should still offer the sandboxes"
    for name in sandboxes:
        assert services[name].get("profiles") == ["sandboxes"], name
    for name, service in services.items():
        if name not in sandboxes:
            assert "profiles" not in service, f"{name} would not start by default"
