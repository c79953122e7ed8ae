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
    assert main(["exports", "show", export.id]) == 0
    out = capsys.readouterr().out
    assert '"kind": "created"' in out and '"kind": "queued"' in out
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
                                        options={"rate_limit": {"requests_per_second": 4}})
    assert main(["connection", "set", org.id, "tripletex", "--base-url", "http://y.example/v2",
                 "--keep-credentials", "--draft"]) == 0
    with session_scope() as session:
        connection = organizations.connection_for(session, org.id, "tripletex")
        assert connection.options == {"rate_limit": {"requests_per_second": 4},
                                      "send_to_ledger": False}
        assert connection.base_url == "http://y.example/v2"
