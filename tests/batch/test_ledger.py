from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headway.batch.ledger import Ledger, Result, error_code, result_from_error, tokens_used
from headway.errors import (
    APIClientError,
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CircuitBreakerOpenError,
    MaxWaitExceededError,
    QuotaExceededError,
    RateLimitError,
    RequestTooLargeError,
    ResourceNotFoundError,
    ServerError,
)


def _skip(ledger: Ledger) -> set[str]:
    """The ids of ``ledger.skip`` (read back from its files, which hold them all)."""
    ids = set(ledger.done_ids())
    assert len(ids) == len(ledger.skip)
    return ids


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_success_line_has_openai_batch_shape(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with Ledger(out) as ledger:
        ledger.write(Result.success("a", 200, {"usage": {"total_tokens": 9}}, request_id="req_1"))
    (rec,) = _records(out)
    assert set(rec) == {"id", "custom_id", "response", "error"}
    assert str(rec["id"]).startswith("batch_req_")
    assert rec["custom_id"] == "a"
    assert rec["response"] == {
        "status_code": 200,
        "request_id": "req_1",
        "body": {"usage": {"total_tokens": 9}},
    }
    assert rec["error"] is None


def test_failure_with_and_without_response(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with Ledger(out) as ledger:
        ledger.write(result_from_error("a", ServerError("boom", status_code=503, body={"e": 1})))
        ledger.write(result_from_error("b", APIConnectionError("reset by peer")))
    a, b = _records(out)
    assert a["error"] is None  # OpenAI's shape: the server answered, so no "error"
    assert a["response"] == {"status_code": 503, "request_id": None, "body": {"e": 1}}
    assert b["response"] is None
    assert b["error"] == {"code": "connection_error", "message": "Connection error: reset by peer"}


def test_internal_errors_name_their_type() -> None:
    r = result_from_error("x", ZeroDivisionError("oops"))
    assert r.error == {"code": "internal_error", "message": "ZeroDivisionError: oops"}
    r = result_from_error("x", TimeoutError())
    assert r.error == {"code": "timeout", "message": "TimeoutError"}


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (QuotaExceededError("q", status_code=429), "insufficient_quota"),
        (RateLimitError("r", status_code=429), "rate_limit_exceeded"),
        (AuthenticationError("a", status_code=401), "authentication_error"),
        (ResourceNotFoundError("n", status_code=404), "not_found"),
        (BadRequestError("b", status_code=400), "bad_request"),
        (APITimeoutError(), "timeout"),
        (APIConnectionError(), "connection_error"),
        (ServerError("s", status_code=500), "server_error"),
        (CircuitBreakerOpenError(), "circuit_open"),
        (RequestTooLargeError("big"), "request_too_large"),
        (MaxWaitExceededError("wait"), "local_rate_limit"),
        (APIClientError("x", status_code=418), "http_418"),
        (APIClientError("x"), "api_error"),
        (ConnectionResetError(), "connection_error"),
        (KeyError("k"), "internal_error"),
    ],
)
def test_error_codes(exc: BaseException, code: str) -> None:
    assert error_code(exc) == code


def test_tokens_used_shapes() -> None:
    assert tokens_used(None) == 0
    assert tokens_used({"usage": "x"}) == 0
    assert tokens_used({"usage": {"prompt_tokens": 2, "completion_tokens": 3}}) == 5
    assert tokens_used({"no": "usage"}) == 0


def test_resume_skips_everything_written(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with Ledger(out) as ledger:
        ledger.write(Result.success("a", 200, {}))
        ledger.write(Result.failure("b", "server_error", "boom"))
    with Ledger(out) as ledger:
        assert _skip(ledger) == {"a", "b"}
        assert (ledger.succeeded_before, ledger.failed_before) == (1, 1)
        assert ledger.notes == []


def test_retry_failed_removes_failed_lines_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with Ledger(out) as ledger:
        ledger.write(Result.success("a", 200, {}))
        ledger.write(Result.failure("b", "server_error", "boom"))
        ledger.write(Result.failure("c", "timeout", "slow"))
    with Ledger(out, retry_failed=True) as ledger:
        assert _skip(ledger) == {"a"}
        assert ledger.failed_before == 0
        assert "removed 2 failed result(s)" in ledger.notes[0]
        ledger.write(Result.success("b", 200, {}))
    assert [r["custom_id"] for r in _records(out)] == ["a", "b"]
    assert not list(tmp_path.glob("*.headway-tmp"))


def test_errors_file_takes_failures_and_counts_for_resume(tmp_path: Path) -> None:
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    with Ledger(out, err) as ledger:
        ledger.write(Result.success("a", 200, {}))
        ledger.write(Result.failure("b", "bad_request", "no"))
    assert [r["custom_id"] for r in _records(out)] == ["a"]
    assert [r["custom_id"] for r in _records(err)] == ["b"]
    with Ledger(out, err) as ledger:
        assert _skip(ledger) == {"a", "b"}
    with Ledger(out, err, retry_failed=True) as ledger:
        assert _skip(ledger) == {"a"}
    assert err.read_text() == ""


def test_errors_path_equal_to_output_means_one_file(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    ledger = Ledger(out, tmp_path / "." / "out.jsonl")
    assert ledger.errors is None


def test_torn_last_line_is_cut_and_resent(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    whole = Result.success("a", 200, {}).to_line()
    torn = Result.success("b", 200, {"long": "x" * 50}).to_line()[:30]
    out.write_bytes(whole + torn)
    with Ledger(out) as ledger:
        assert _skip(ledger) == {"a"}
        assert "repaired a torn last line" in ledger.notes[0]
        ledger.write(Result.success("b", 200, {}))
    assert [r["custom_id"] for r in _records(out)] == ["a", "b"]


def test_whole_last_record_missing_only_its_newline_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(Result.success("a", 200, {}).to_line()[:-1])
    with Ledger(out) as ledger:
        assert _skip(ledger) == {"a"}
        assert "missing newline" in ledger.notes[0]
        ledger.write(Result.success("b", 200, {}))
    assert [r["custom_id"] for r in _records(out)] == ["a", "b"]


def test_unreadable_middle_lines_are_reported(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    lines = [b"junk %d\n" % i for i in range(7)] + [Result.success("a", 200, {}).to_line()]
    out.write_bytes(b"\n" + b"".join(lines) + b'{"custom_id": 5}\n')
    with Ledger(out) as ledger:
        assert _skip(ledger) == {"a"}
        assert "ignored unreadable line(s) 2, 3, 4, 5, 6 and 3 more" in ledger.notes[0]


def test_success_after_failure_for_same_id_counts_as_success(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(
        Result.failure("a", "timeout", "t").to_line() + Result.success("a", 200, {}).to_line()
    )
    with Ledger(out) as ledger:
        assert (ledger.succeeded_before, ledger.failed_before) == (1, 0)


def test_write_before_open_and_double_close(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "sub" / "out.jsonl")
    with pytest.raises(RuntimeError, match="not open"):
        ledger.write(Result.success("a", 200, {}))
    ledger.open()
    ledger.write(Result.success("a", 200, {}))
    ledger.close()
    ledger.close()


def test_fsync_option_writes(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with Ledger(out, fsync=True) as ledger:
        ledger.write(Result.success("a", 200, {}))
    assert len(_records(out)) == 1


# -- exactly once across crashes -------------------------------------------------------------

_outcomes = st.lists(st.booleans(), min_size=1, max_size=30)  # True = success


@given(
    outcomes=_outcomes,
    crash_points=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 200)), max_size=4),
    retry_failed=st.booleans(),
    split_errors=st.booleans(),
)
def test_resume_after_crashes_leaves_each_id_exactly_once(
    tmp_path_factory: pytest.TempPathFactory,
    outcomes: list[bool],
    crash_points: list[tuple[int, int]],
    retry_failed: bool,
    split_errors: bool,
) -> None:
    """Runs die at random points, possibly mid-write; the last run completes."""
    d = tmp_path_factory.mktemp("ledger")
    out = d / "out.jsonl"
    err = d / "err.jsonl" if split_errors else None
    ids = [f"id{i}" for i in range(len(outcomes))]

    def result(i: int) -> Result:
        if outcomes[i]:
            return Result.success(ids[i], 200, {"n": i})
        return Result.failure(ids[i], "server_error", "boom", status_code=503)

    def run(stop_after: int | None, torn_bytes: int) -> None:
        with Ledger(out, err, retry_failed=retry_failed) as ledger:
            todo = [i for i in range(len(ids)) if ids[i] not in ledger.skip]
            for n, i in enumerate(todo):
                if stop_after is not None and n == stop_after:
                    # die in the middle of this write: a prefix of the line reaches the file
                    line = result(i).to_line()
                    target = out if (outcomes[i] or err is None) else err
                    with open(target, "ab") as f:
                        f.write(line[: min(torn_bytes, len(line) - 1)])
                    return
                ledger.write(result(i))

    for stop_after, torn in crash_points:
        run(stop_after, torn)
    run(None, 0)

    counts: Counter[str] = Counter()
    for path in (out, err):
        if path is not None and path.exists():
            counts.update(r["custom_id"] for r in _records(path))
    assert set(counts) == set(ids)
    assert all(n == 1 for n in counts.values()), counts


@pytest.mark.parametrize("spill_at", [0, 2, 1_000_000])
@pytest.mark.parametrize("retry_failed", [False, True])
def test_resume_counts_alike_with_the_ids_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spill_at: int, retry_failed: bool
) -> None:
    import headway._idset as idset_module

    monkeypatch.setattr(idset_module, "SPILL_AT", spill_at)
    out, err = tmp_path / "out.jsonl", tmp_path / "err.jsonl"
    with Ledger(out, err) as ledger:
        ledger.write(Result.success("a", 200, {}))
        ledger.write(Result.failure("b", "server_error", "boom"))
        ledger.write(Result.failure("c", "timeout", "slow"))
        ledger.write(Result.success("b", 200, {}))  # a repeat: the success wins
        ledger.write(Result.failure("d", "timeout", "slow"))
        ledger.write(Result.failure("d", "timeout", "again"))
    with Ledger(out, err, retry_failed=retry_failed) as ledger:
        assert ledger.succeeded_before == 2
        if retry_failed:
            assert _skip(ledger) == {"a", "b"}
            assert ledger.failed_before == 0
            assert "removed 4 failed result(s)" in ledger.notes[0]
        else:
            assert _skip(ledger) == {"a", "b", "c", "d"}
            assert ledger.failed_before == 2
    assert [p.name for p in tmp_path.iterdir() if "headway-ids" in p.name] == []


def test_an_owner_that_does_not_check_digests_does_not_read_them(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    done = Result.success("a", 200, {})
    done.digest = "1f2e"
    out.write_bytes(done.to_line())
    with Ledger(out) as checking:
        assert checking.digests
        assert checking.digests.answers("a", "1f2e")
        assert not checking.digests.answers("a", "9999")
    with Ledger(out, digests=False) as ledger:
        assert "a" in ledger.skip
        assert not ledger.digests  # nothing read back: nothing held
