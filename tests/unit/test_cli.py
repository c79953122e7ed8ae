import pytest

from shared.db.session import session_scope
from shared.domain import exports
from producers.cli import main


def test_org_create_prints_id_and_key_once(capsys):
    assert main(["org", "create", "Cli AS"]) == 0
    out = capsys.readouterr().out
    assert "organization: org_" in out and "aic_" in out


def test_exports_show_prints_the_event_log_and_retry_requeues_a_failed_export(capsys, org, make_expense):
    with session_scope() as session:
        export = exports.create_export(session, org.id, make_expense(), "tripletex", actor="t")
    assert main(["exports", "show", export.id, "--json"]) == 0
    out = capsys.readouterr().out
    assert '"kind": "created"' in out and '"kind": "queued"' in out
    assert main(["exports", "show", export.id]) == 0  # for people: one line per event
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{export.id}  PROCESSING  to tripletex")
    assert any("created -> processing" in line and "t" in line for line in lines)
    assert any(line.strip().split()[1] == "queued" for line in lines[4:])
    # only a failed export can be retried: refused with a message, exit code 2
    assert main(["exports", "retry", export.id]) == 2
    assert "only a failed export can be retried" in capsys.readouterr().err


def test_unknown_export_is_a_clear_error(capsys):
    assert main(["exports", "show", "exp_xp_nope"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_connection_set_keeps_options_it_has_no_flag_for(org):
    from shared.domain import organizations

    with session_scope() as session:
        organizations.upsert_connection(session, org.id, "tripletex", base_url="http://x.example/v2",
                                        credentials={"consumer_token": "c", "employee_token": "e"},
                                        options={"rate_limit": {"requests_per_second": 4}})
    assert main(["connection", "set", org.id, "tripletex", "--base-url", "http://x.example/v2/",
                 "--keep-credentials", "--draft"]) == 0
    with session_scope() as session:
        connection = organizations.connection_for(session, org.id, "tripletex")
        assert connection.options == {"rate_limit": {"requests_per_second": 4},
                                      "send_to_ledger": False}
        assert connection.base_url == "http://x.example/v2"


def _target(org_id: str) -> tuple:
    from shared.domain import organizations

    with session_scope() as session:
        c = organizations.connection_for(session, org_id, "tripletex")
        return c.base_url, c.credentials_encrypted, c.options, c.updated_at


def test_connection_set_refuses_a_new_base_url_without_the_credentials(capsys, org):
    """--keep-credentials with another --base-url would send the stored tokens to that host.
    Fails on the old code, which moved the connection (exit 0)."""
    before = _target(org.id)
    assert main(["connection", "set", org.id, "tripletex", "--base-url",
                 "https://collector.example/v2", "--keep-credentials"]) == 2
    err = capsys.readouterr().err
    assert "send the credentials together with the new base_url" in err
    assert "without --keep-credentials" in err and "Nothing was changed" in err
    assert _target(org.id) == before
    # Given with the new URL, the credentials may go there.
    assert main(["connection", "set", org.id, "tripletex", "--base-url",
                 "https://api-test.tripletex.tech/v2", "--consumer-token", "c2",
                 "--employee-token", "e2"]) == 0
    assert _target(org.id)[0] == "https://api-test.tripletex.tech/v2"


def _source(org_id: str):
    from shared import crypto
    from shared.domain import sources

    with session_scope() as session:
        c = sources.source_connection_for(session, org_id, "findity")
        return c.base_url, crypto.decrypt_json(c.credentials_encrypted), c.options, c.updated_at


SOURCE = {"--base-url": "http://127.0.0.1:9/api", "--token-url": "http://127.0.0.1:9/token",
          "--findity-org": "f-1"}


def _flags(values: dict[str, str]) -> list[str]:
    return [part for flag, value in values.items() for part in (flag, value)]


@pytest.mark.parametrize("moved,expected", [
    ({"--base-url": "https://collector.example/api"}, "base_url would change from"),
    ({"--token-url": "https://collector.example/token"}, "--token-url cannot be combined"),
], ids=["base_url", "token_url"])
def test_source_set_refuses_a_new_url_without_the_credentials(capsys, org, moved, expected):
    """Fails on the old code, which kept the stored client secret for the new URL (exit 0)."""
    assert main(["source", "set", org.id, *_flags(SOURCE), "--client-id", "c",
                 "--client-secret", "s"]) == 0
    before = _source(org.id)
    assert before[1] == {"client_id": "c", "client_secret": "s",
                         "token_url": "http://127.0.0.1:9/token"}
    assert before[2] == {"organization_id": "f-1"}
    values = {**SOURCE, **moved}
    if "--token-url" not in moved:
        del values["--token-url"]
    assert main(["source", "set", org.id, *_flags(values), "--keep-credentials"]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert _source(org.id) == before
    values = {**SOURCE, **moved}
    assert main(["source", "set", org.id, *_flags(values), "--client-id", "c",
                 "--client-secret", "s2"]) == 0
    after = _source(org.id)
    assert after[0] == values["--base-url"] and after[1]["token_url"] == values["--token-url"]


def test_source_set_keeps_options_it_is_not_told_about(org):
    assert main(["source", "set", org.id, *_flags(SOURCE), "--client-id", "c",
                 "--client-secret", "s", "--option", "content_file=sie4",
                 "--option", 'vat_rates={"1": 25}']) == 0
    assert main(["source", "set", org.id, "--base-url", SOURCE["--base-url"],
                 "--keep-credentials", "--findity-org", "f-2"]) == 0
    assert _source(org.id)[2] == {"organization_id": "f-2", "content_file": "sie4",
                                  "vat_rates": {"1": 25}}
    assert main(["source", "set", org.id, "--base-url", SOURCE["--base-url"],
                 "--keep-credentials", "--option", "content_file="]) == 0
    assert _source(org.id)[2] == {"organization_id": "f-2", "vat_rates": {"1": 25}}


def test_apikey_create_takes_scopes_and_list_shows_them(capsys, org):
    from shared.domain import organizations

    assert main(["apikey", "create", org.id, "--name", "booking", "--scope", "callbacks"]) == 0
    out = capsys.readouterr().out
    assert "scopes callbacks" in out and "aic_" in out
    assert main(["apikey", "create", org.id]) == 0
    assert "scopes exports " in capsys.readouterr().out
    with session_scope() as session:
        keys = {k.name: k.scopes for k in organizations.get_organization(session, org.id).api_keys}
    assert keys["booking"] == ["callbacks"] and keys["default"] == ["exports"]
    assert main(["apikey", "list", org.id]) == 0
    assert "\tbooking\t" in capsys.readouterr().out


def test_unknown_scope_is_refused_with_exit_2_and_creates_nothing(capsys, org):
    from shared.domain import organizations

    with session_scope() as session:
        before = len(organizations.get_organization(session, org.id).api_keys)
    with pytest.raises(SystemExit) as exited:
        main(["apikey", "create", org.id, "--scope", "admin"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "--scope: invalid choice: 'admin'" in err and "exports" in err and "callbacks" in err
    with session_scope() as session:
        assert len(organizations.get_organization(session, org.id).api_keys) == before


def test_org_create_with_both_scopes(capsys):
    assert main(["org", "create", "Booking AS", "--scope", "exports", "--scope",
                 "callbacks"]) == 0
    assert "scopes exports,callbacks" in capsys.readouterr().out


def _failed_export(org, make_expense):
    from shared.domain.statuses import ExportStatus
    from shared.domain.state_machine import transition

    with session_scope() as session:
        export = exports.create_export(session, org.id, make_expense(), "tripletex", actor="t")
        transition(session, export, ExportStatus.FAILED, actor="t", reason="mapping",
                   error_code="mapping", error_message="no account")
        return export.id


def test_retry_that_cannot_reach_the_broker_says_so_and_exits_non_zero(
        capsys, monkeypatch, org, make_expense):
    """Never "queued again" when nothing was queued (an operator's CLI on the wrong Redis)."""
    import kombu.exceptions

    import shared.jobs

    export_id = _failed_export(org, make_expense)

    def broker_down(job):
        raise kombu.exceptions.OperationalError("Error 111 connecting to 127.0.0.1:6399. "
                                                "Connection refused.")

    monkeypatch.setattr(shared.jobs, "send_now", broker_down)
    assert main(["exports", "retry", export_id]) == 1
    captured = capsys.readouterr()
    assert "queued again" not in captured.out
    assert "could not be reached" in captured.err and "Connection refused" in captured.err
    with session_scope() as session:  # the retry itself is committed: the sweeper sends it
        assert exports.get_export(session, org.id, export_id).status == "processing"


def test_retry_that_reached_the_broker_says_queued(capsys, org, make_expense, sent_jobs):
    export_id = _failed_export(org, make_expense)
    assert main(["exports", "retry", export_id]) == 0
    assert f"{export_id} queued again" in capsys.readouterr().out
    assert sent_jobs[-1].args == [export_id]  # created, then queued again


def test_the_cli_adopts_the_running_local_stack_only_while_it_runs(tmp_path, monkeypatch):
    import os

    from shared.config import adopt_running_devstack, running_devstack_env

    env_file = tmp_path / "devstack.env"
    env_file.write_text("# comment\nAIC_DATABASE_URL=sqlite:///stack.db\n"
                        "AIC_REDIS_URL=redis://127.0.0.1:41234/0\n"
                        f"AIC_DEVSTACK_PID={os.getpid()}\n")
    assert running_devstack_env(env_file) == {"AIC_DATABASE_URL": "sqlite:///stack.db",
                                              "AIC_REDIS_URL": "redis://127.0.0.1:41234/0"}
    # What the environment sets itself wins; only the rest is adopted.
    monkeypatch.setenv("AIC_DATABASE_URL", os.environ.get("AIC_DATABASE_URL", "sqlite:///x.db"))
    monkeypatch.delenv("AIC_REDIS_URL", raising=False)
    try:
        assert adopt_running_devstack(env_file) == {"AIC_REDIS_URL": "redis://127.0.0.1:41234/0"}
        assert os.environ["AIC_REDIS_URL"] == "redis://127.0.0.1:41234/0"
    finally:
        monkeypatch.undo()
        from shared.config import reset_settings_cache
        reset_settings_cache()
    # A file left behind by a stack that was killed (its pid is gone) is ignored.
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    env_file.write_text(f"AIC_REDIS_URL=redis://127.0.0.1:41234/0\nAIC_DEVSTACK_PID={dead}\n")
    assert running_devstack_env(env_file) is None
    assert running_devstack_env(tmp_path / "missing.env") is None


def test_exports_list_is_a_table_with_filters_and_json(capsys, org, make_expense):
    import json

    export_id = _failed_export(org, make_expense)
    assert main(["exports", "list", org.id, "--status", "failed", "--since", "1h"]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["EXPORT", "STATUS", "TARGET"]
    assert row.startswith(export_id) and "failed" in row and "no account" in row
    assert main(["exports", "list", "--all", "--status", "failed", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert any(e["export_id"] == export_id and e["organization_id"] == org.id
               for e in listed["data"])
    assert main(["exports", "list", org.id, "--since", "2999-01-01"]) == 0
    assert "0 of 0 exports" in capsys.readouterr().out
    assert main(["exports", "list", org.id, "--since", "yesterday"]) == 2
    assert "give an age (30m, 2h, 7d)" in capsys.readouterr().err


def test_exports_cancel_and_wait(capsys, org, make_expense):
    with session_scope() as session:
        export = exports.create_export(session, org.id, make_expense(), "tripletex", actor="t")
    # Still processing: the wait ends at its timeout with exit 3.
    assert main(["exports", "wait", export.id, "--timeout", "0.3", "--interval", "0.1"]) == 3
    assert "still processing" in capsys.readouterr().err
    assert main(["exports", "cancel", export.id]) == 0
    assert f"{export.id} is cancelled" in capsys.readouterr().out
    # Ended, but not booked: exit 1.
    assert main(["exports", "wait", export.id]) == 1
    assert "cancelled 1" in capsys.readouterr().out
    assert main(["exports", "wait", "exp_xp_000000000000"]) == 2


def test_connection_show_never_shows_credentials(capsys, org):
    import json

    assert main(["connection", "show", org.id, "tripletex"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["has_credentials"] is True and shown["target_system"] == "tripletex"
    assert "credentials" not in shown and "consumer_token" not in json.dumps(shown)


def test_connection_credentials_come_from_a_file_or_stdin_never_a_missing_terminal(
        capsys, monkeypatch, tmp_path, org):
    import io
    import json

    from shared.domain import organizations

    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal: never prompt
    assert main(["connection", "set", org.id, "tripletex", "--base-url",
                 "http://x.example/v2"]) == 2
    assert "no terminal to ask for it" in capsys.readouterr().err
    secrets_file = tmp_path / "tripletex.json"
    secrets_file.write_text(json.dumps({"consumer_token": "c2", "employee_token": "e2"}))
    assert main(["connection", "set", org.id, "tripletex", "--base-url", "http://x.example/v2",
                 "--credentials-file", str(secrets_file)]) == 0
    with session_scope() as session:
        connection = organizations.connection_for(session, org.id, "tripletex")
        assert organizations.connection_credentials(connection)["employee_token"] == "e2"
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"consumer_tokn": "typo"})))
    assert main(["connection", "set", org.id, "tripletex", "--base-url", "http://x.example/v2",
                 "--credentials-file", "-"]) == 2
    assert "consumer_tokn is not a credential of tripletex" in capsys.readouterr().err


def test_source_poll_asks_a_worker_through_the_queue(capsys, sent_jobs):
    from shared.config import get_settings
    from shared.queue import TASK_POLL_SOURCES

    assert main(["source", "poll"]) == 0
    assert [(job.task_name, job.queue) for job in sent_jobs] == [
        (TASK_POLL_SOURCES, get_settings().maintenance_queue)]
    assert "queued" in capsys.readouterr().out


def test_source_poll_says_so_when_the_broker_is_unreachable(capsys, monkeypatch):
    import shared.jobs

    def unreachable(job):
        raise ConnectionError("connection refused")

    monkeypatch.setattr(shared.jobs, "send_now", unreachable)
    assert main(["source", "poll"]) == 1
    assert "could not be reached" in capsys.readouterr().err


def test_connection_set_takes_options_from_a_file_and_refuses_options_that_cannot_post(
        capsys, monkeypatch, org, tmp_path):
    import io

    from shared.domain import organizations

    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # no terminal

    secrets_file = tmp_path / "billdiary.json"
    secrets_file.write_text('{"api_key": "k", "api_secret": "s"}')
    # The optional token is not asked for without a terminal: key and secret are enough.
    flags = ["connection", "set", org.id, "billdiary", "--base-url", "http://erp.example/api",
             "--credentials-file", str(secrets_file)]
    # A BillDiary connection cannot post without its location and currency: refused now, with
    # the fields named, instead of failing every export later.
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert "options.location_id: Field required" in err and "options.currency" in err
    options = tmp_path / "options.json"
    options.write_text('{"location_id": 3, "currency": "nok", "payable_accounts": ["2930"]}')
    assert main([*flags, "--options-file", str(options)]) == 0
    with session_scope() as session:
        stored = organizations.connection_for(session, org.id, "billdiary").options
    assert stored == {"location_id": 3, "currency": "nok", "payable_accounts": ["2930"]}
    with session_scope() as session:
        connection = organizations.connection_for(session, org.id, "billdiary")
        assert organizations.connection_credentials(connection) == {"api_key": "k",
                                                                    "api_secret": "s"}


def test_aic_uses_the_running_stacks_broker_for_what_it_queues(tmp_path):
    """The Celery app takes its broker URL when it is created, and building aic's parser loads
    the systems, which create it: the running stack must be adopted before that, or a retry is
    queued on a Redis no worker reads (seen: 'queued again', and nothing ran)."""
    import os
    import subprocess
    import sys

    env_file = tmp_path / "devstack.env"
    env_file.write_text("AIC_REDIS_URL=redis://127.0.0.1:6399/5\n"
                        f"AIC_DEVSTACK_PID={os.getpid()}\n")
    script = (
        "import sys; from pathlib import Path; import shared.config as config\n"
        f"config.DEVSTACK_ENV_FILE = Path({str(env_file)!r})\n"
        "from producers.cli import main\n"
        "assert main(['keygen']) == 0\n"
        "from shared.queue import celery_app\n"
        "print('BROKER', celery_app.conf.broker_url)\n")
    env = {k: v for k, v in os.environ.items() if k != "AIC_REDIS_URL"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "BROKER redis://127.0.0.1:6399/5" in done.stdout
    assert "using the running local stack's AIC_REDIS_URL" in done.stderr


def test_a_database_older_than_the_code_is_a_clear_error_not_a_traceback(
        capsys, monkeypatch, tmp_path):
    from shared.config import reset_settings_cache
    from shared.db.session import reset_engines

    monkeypatch.setenv("AIC_DATABASE_URL", f"sqlite:///{tmp_path / 'never-migrated.db'}")
    reset_settings_cache()
    reset_engines()
    try:
        assert main(["exports", "list", "--all"]) == 1
    finally:
        monkeypatch.undo()
        reset_settings_cache()
        reset_engines()
    err = capsys.readouterr().err
    assert "run `aic migrate`" in err and "no such table" in err and "Traceback" not in err
