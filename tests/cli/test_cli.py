from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from headway import __version__
from headway.cli import check_exactly_once, cli, main, write_demo_input

from .conftest import ThreadedFakeAPI, result_ids, write_chat_input

StartServer = Callable[..., ThreadedFakeAPI]


def invoke(args: list[str], **kwargs: object) -> Result:
    return CliRunner().invoke(cli, args, catch_exceptions=False, **kwargs)  # type: ignore[arg-type]


def one_line_error(result: Result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("headway: error: ")
    assert fragment in lines[0]
    assert "Traceback" not in result.output


# -- help and version --------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["run"], ["demo"], ["serve-fake"]])
def test_help_everywhere(command: list[str]) -> None:
    result = invoke([*command, "--help"])
    assert result.exit_code == 0
    assert "Usage: headway" in result.output


def test_version() -> None:
    result = invoke(["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_main_entry_point_exits_with_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


# -- usage errors: one line, exit 2 ----------------------------------------------------------


def test_bad_flag(tmp_path: Path) -> None:
    one_line_error(invoke(["run", "x", "-o", "y", "--bogus"]), "No such option '--bogus'")


def test_bad_value(tmp_path: Path) -> None:
    one_line_error(invoke(["run", "x", "-o", "y", "--rpm", "-1"]), "--rpm")


def test_missing_output() -> None:
    one_line_error(invoke(["run", "x"]), "--output")


def test_missing_input_file(tmp_path: Path) -> None:
    one_line_error(
        invoke(["run", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o")]), "does not exist"
    )


def test_output_is_a_directory(tmp_path: Path) -> None:
    inp = write_chat_input(tmp_path / "in.jsonl", 1)
    one_line_error(invoke(["run", str(inp), "-o", str(tmp_path)]), "is a directory")


def test_missing_api_key_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    inp = write_chat_input(tmp_path / "in.jsonl", 1)
    result = invoke(["run", str(inp), "-o", str(tmp_path / "o"), "--provider", "openai"])
    one_line_error(result, "OPENAI_API_KEY is not set")
    result = invoke(
        [
            "run",
            str(inp),
            "-o",
            str(tmp_path / "o"),
            "--base-url",
            "http://x",
            "--api-key-env",
            "MY_KEY",
        ]
    )
    one_line_error(result, "MY_KEY is not set")


def test_no_target(tmp_path: Path) -> None:
    inp = write_chat_input(tmp_path / "in.jsonl", 1)
    one_line_error(
        invoke(["run", str(inp), "-o", str(tmp_path / "o")]), "--provider NAME or --base-url"
    )


def test_bad_base_url(tmp_path: Path) -> None:
    inp = write_chat_input(tmp_path / "in.jsonl", 1)
    one_line_error(
        invoke(["run", str(inp), "-o", str(tmp_path / "o"), "--base-url", "ftp://x"]), "http(s) URL"
    )


def test_missing_explicit_config(tmp_path: Path) -> None:
    one_line_error(
        invoke(["--config", str(tmp_path / "no.toml"), "run", "--help"]), "does not exist"
    )


def test_unreadable_config(tmp_path: Path) -> None:
    cfg = tmp_path / "headway.toml"
    cfg.write_text("[run\nrpm = ")
    one_line_error(invoke(["--config", str(cfg), "run", "--help"]), "not valid TOML")


def test_config_is_a_directory(tmp_path: Path) -> None:
    one_line_error(invoke(["--config", str(tmp_path), "run", "--help"]), "")


def test_config_unknown_setting_and_table(tmp_path: Path) -> None:
    cfg = tmp_path / "headway.toml"
    cfg.write_text("[run]\nrpmm = 5\n")
    one_line_error(
        invoke(["--config", str(cfg), "run", "--help"]), "unknown setting 'rpmm' in [run]"
    )
    cfg.write_text("[runn]\nrpm = 5\n")
    one_line_error(invoke(["--config", str(cfg), "run", "--help"]), "unknown table [runn]")
    cfg.write_text("colour = 'blue'\n")
    one_line_error(invoke(["--config", str(cfg), "run", "--help"]), "unknown setting 'colour'")


def test_config_tables_of_commands_loaded_on_use(tmp_path: Path) -> None:
    """``demo`` and ``serve-fake`` are imported when used; their tables are still checked."""
    cfg = tmp_path / "headway.toml"
    cfg.write_text("[demo]\nconcurrency = 4\n[serve-fake]\nrpm = 60\n")
    assert invoke(["--config", str(cfg), "run", "--help"]).exit_code == 0
    cfg.write_text("[serve-fake]\nrpmm = 60\n")
    one_line_error(
        invoke(["--config", str(cfg), "run", "--help"]), "unknown setting 'rpmm' in [serve-fake]"
    )
    listed = invoke(["--help"]).output
    assert all(name in listed for name in ("batches", "demo", "run", "serve-fake"))


def test_serve_fake_bad_rates() -> None:
    one_line_error(
        invoke(["serve-fake", "--rate-limit", "0.8", "--server-error", "0.5"]), "fault rates"
    )


# -- run against a fake server ---------------------------------------------------------------


def test_run_end_to_end_with_summary_json(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server()
    inp = write_chat_input(tmp_path / "in.jsonl", 30)
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    args = ["run", str(inp), "-o", str(out), "--base-url", server.url + "/v1"]
    result = invoke([*args, "--summary-json", str(summary), "--progress", "plain"])
    assert result.exit_code == 0, result.output
    assert Counter(result_ids(out)) == Counter({f"q{i}": 1 for i in range(30)})
    data = json.loads(summary.read_text())
    assert (data["succeeded"], data["failed"], data["total"]) == (30, 0, 30)
    assert data["tokens"] > 0
    assert "succeeded" in result.stderr
    assert "[headway] 30/30 100%" in result.stderr
    rec = json.loads(out.read_text().splitlines()[0])
    assert rec["response"]["status_code"] == 200
    assert rec["response"]["body"]["object"] == "chat.completion"

    again = invoke([*args, "-q"])
    assert again.exit_code == 0
    assert "already done (skipped)" in again.stderr
    assert len(result_ids(out)) == 30


def test_run_permanent_failures_exit_1_then_retry_failed(
    tmp_path: Path, fake_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = fake_server(api_key="sk-right")
    inp = write_chat_input(tmp_path / "in.jsonl", 5)
    inp.write_text(inp.read_text() + "{broken\n")
    out, errs = tmp_path / "out.jsonl", tmp_path / "errors.jsonl"
    monkeypatch.setenv("FAKE_KEY", "sk-wrong")
    args = ["run", str(inp), "-o", str(out), "--errors", str(errs), "--base-url", server.url]
    result = invoke([*args, "--api-key-env", "FAKE_KEY", "-q"])
    # the server rejects the key: the run stops (exit 4), the lines are left unsent
    assert result.exit_code == 4, result.output
    assert "the server rejects the key in FAKE_KEY: 401 invalid_api_key" in result.stderr
    assert "sk-wrong" not in result.output
    assert "sk-wrong" not in errs.read_text()
    assert result_ids(out) == []
    assert result_ids(errs) == ["6"]

    again = invoke([*args, "--api-key-env", "FAKE_KEY", "-q"])
    assert again.exit_code == 4
    assert "already done (skipped)" in again.stderr  # the broken line is not sent again

    monkeypatch.setenv("FAKE_KEY", "sk-right")
    fixed = invoke([*args, "--api-key-env", "FAKE_KEY", "-q", "--retry-failed"])
    assert fixed.exit_code == 1  # the broken line is still broken
    assert sorted(result_ids(out)) == [f"q{i}" for i in range(5)]
    assert result_ids(errs) == ["6"]


def test_settings_from_env_and_toml(
    tmp_path: Path, fake_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = fake_server()
    inp = write_chat_input(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    cfg = tmp_path / "headway.toml"
    cfg.write_text(f'[run]\nbase-url = "{server.url}"\noutput = "{out}"\nconcurrency = 2\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEADWAY_RPM", "60000")
    monkeypatch.setenv("HEADWAY_PROGRESS", "none")
    result = invoke(["run", str(inp), "--summary-json", "s.json"])
    assert result.exit_code == 0, result.output
    assert len(result_ids(out)) == 3
    # a flag beats the file
    out2 = tmp_path / "other.jsonl"
    result = invoke(["run", str(inp), "-o", str(out2), "-q"])
    assert result.exit_code == 0
    assert len(result_ids(out2)) == 3


def test_run_rich_progress(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server()
    inp = write_chat_input(tmp_path / "in.jsonl", 5)
    result = invoke(
        [
            "run",
            str(inp),
            "-o",
            str(tmp_path / "o.jsonl"),
            "--base-url",
            server.url,
            "--progress",
            "rich",
        ]
    )
    assert result.exit_code == 0
    assert "ok 5" in result.stderr


# -- demo --------------------------------------------------------------------------------------


def test_demo_quick_without_chaos(tmp_path: Path) -> None:
    result = invoke(
        ["demo", "--requests", "25", "--rpm", "60000", "--no-chaos", "--dir", str(tmp_path), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "exactly-once check passed: 25 results for 25 requests" in result.stdout
    assert str(tmp_path / "results.jsonl") in result.stdout


def test_demo_with_chaos(tmp_path: Path) -> None:
    summary = tmp_path / "s.json"
    result = invoke(
        [
            "demo",
            "--requests",
            "60",
            "--rpm",
            "60000",
            "--dir",
            str(tmp_path),
            "--progress",
            "plain",
            "--summary-json",
            str(summary),
        ]
    )
    assert result.exit_code == 0, result.output
    assert "exactly-once check passed: 60 results for 60 requests" in result.stdout
    data = json.loads(summary.read_text())
    assert data["succeeded"] == 60


def test_check_exactly_once_reports_missing_and_twice(tmp_path: Path) -> None:
    inp = tmp_path / "in.jsonl"
    write_demo_input(inp, 3)
    out = tmp_path / "out.jsonl"
    rec = {"id": "x", "response": None, "error": None}
    out.write_text(
        "".join(json.dumps({**rec, "custom_id": c}) + "\n" for c in ["demo-000001", "demo-000001"])
    )
    n, missing, twice = check_exactly_once(inp, out)
    assert n == 2
    assert missing == ["demo-000002", "demo-000003"]
    assert twice == ["demo-000001"]
    assert check_exactly_once(inp, tmp_path / "none.jsonl") == (
        0,
        ["demo-000001", "demo-000002", "demo-000003"],
        [],
    )


def test_no_arguments_prints_help() -> None:
    result = invoke([])
    assert result.exit_code == 0
    assert "Commands:" in result.stdout


def test_unwritable_output_is_one_line(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server()
    inp = write_chat_input(tmp_path / "in.jsonl", 1)
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke(["run", str(inp), "-o", str(blocker / "out.jsonl"), "--base-url", server.url])
    one_line_error(result, "headway: error:")


def test_run_with_tpm_and_gzip_input(tmp_path: Path, fake_server: StartServer) -> None:
    import gzip

    server = fake_server(tpm=1_000_000)
    plain = write_chat_input(tmp_path / "in.jsonl", 10)
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    out = tmp_path / "out.jsonl"
    args = ["run", str(gz), "-o", str(out), "--base-url", server.url, "--tpm", "1000000", "-q"]
    result = invoke(args)
    assert result.exit_code == 0, result.output
    assert len(result_ids(out)) == 10


def test_duplicates_warn_and_exit_1(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server()
    inp = write_chat_input(tmp_path / "in.jsonl", 3)
    inp.write_text(inp.read_text() + inp.read_text().splitlines()[0] + "\n")
    out = tmp_path / "out.jsonl"
    result = invoke(["run", str(inp), "-o", str(out), "--base-url", server.url, "-q"])
    assert result.exit_code == 1
    assert "1 line(s) repeat an earlier custom_id" in result.stderr
    assert "'q0' on line 4" in result.stderr
    assert sorted(result_ids(out)) == ["q0", "q1", "q2"]


def test_torn_output_is_repaired_and_reported(tmp_path: Path, fake_server: StartServer) -> None:
    server = fake_server()
    inp = write_chat_input(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "x", "custom_id": "q0", "response": {"status_co')
    result = invoke(["run", str(inp), "-o", str(out), "--base-url", server.url, "-q"])
    assert result.exit_code == 0
    assert "repaired a torn last line" in result.stderr
    assert sorted(result_ids(out)) == ["q0", "q1", "q2"]
