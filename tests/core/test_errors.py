import asyncio
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

import headway
from headway.errors import (
    MAX_BODY_CHARS,
    APIClientError,
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    CircuitBreakerOpenError,
    ConfigurationError,
    ExecutorShutdownError,
    InvalidResponseError,
    MaxWaitExceededError,
    QuotaExceededError,
    RateLimitError,
    RequestTooLargeError,
    ResourceNotFoundError,
    ServerError,
    StreamError,
    is_retryable,
    never_retry,
)


def test_every_api_error_is_a_headway_error() -> None:
    for cls in (
        APIConnectionError,
        APITimeoutError,
        AuthenticationError,
        BadRequestError,
        InvalidResponseError,
        QuotaExceededError,
        RateLimitError,
        ResourceNotFoundError,
        ServerError,
        StreamError,
    ):
        assert issubclass(cls, APIClientError)
        assert issubclass(cls, headway.HeadwayError)
    assert issubclass(APIConnectionError, ConnectionError)
    assert issubclass(APITimeoutError, TimeoutError)
    assert not issubclass(QuotaExceededError, RateLimitError)  # quota is not rate


def test_connection_error_message_prefix() -> None:
    assert str(APIConnectionError("refused")).startswith("Connection error: refused")
    assert str(APIConnectionError("Connection error: x")) == "Connection error: x"
    assert str(APIConnectionError()) == "Connection error."


def test_context_is_carried_and_secrets_redacted() -> None:
    err = ServerError(
        "Error code: 503",
        status_code=503,
        headers={"X-Request-Id": "req_1", "Authorization": "Bearer sk-secret"},
        body={"error": {"message": "overloaded"}},
        method="POST",
        url="https://key:pw@api.example.com/v1/chat?api_key=sk-secret",
    )
    assert err.status_code == 503
    assert err.headers["x-request-id"] == "req_1"  # case-insensitive
    assert err.request_id == "req_1"
    assert err.body == {"error": {"message": "overloaded"}}
    assert "sk-secret" not in str(err)
    assert "sk-secret" not in repr(err)
    assert "POST https://***@api.example.com/v1/chat?api_key=***" in str(err)


def test_body_is_bounded() -> None:
    err = APIClientError("big", body="x" * (MAX_BODY_CHARS * 3))
    assert len(err.body) < MAX_BODY_CHARS + 100
    err = APIClientError("big", body={"data": ["y" * 100] * 1000})
    assert isinstance(err.body, str)
    assert len(err.body) < MAX_BODY_CHARS + 100
    assert APIClientError("b", body=b"raw").body == "raw"
    assert APIClientError("n").body is None
    assert APIClientError("o", body={1: object()}).body is not None


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (RateLimitError("r", status_code=429, retry_after=1), True),
        (QuotaExceededError("q", status_code=429), False),
        (ServerError("s", status_code=529), True),
        (APIClientError("timeout", status_code=408), True),
        (APIClientError("conflict", status_code=409), True),
        (APIClientError("teapot", status_code=418), False),
        (APIClientError("none"), False),
        (AuthenticationError("a", status_code=401), False),
        (ResourceNotFoundError("n", status_code=404), False),
        (BadRequestError("b", status_code=400), False),
        (APIConnectionError("c"), True),
        (APITimeoutError(), True),
        (InvalidResponseError("garbage", status_code=200), True),
        (StreamError("mid-stream error"), True),
        (MaxWaitExceededError("local", retry_after=3), True),
        (CircuitBreakerOpenError(retry_after=1), False),
        (RequestTooLargeError("too big", requested=5, capacity=1), False),
        (ConfigurationError("bad"), False),
        (ExecutorShutdownError("closed"), False),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (ValueError(), False),
        (asyncio.CancelledError(), False),
    ],
)
def test_is_retryable_table(exc: BaseException, expected: bool) -> None:
    assert is_retryable(exc) is expected


def test_should_retry_header_wins() -> None:
    no = ServerError("s", status_code=500, headers={"X-Should-Retry": "false"})
    yes = BadRequestError("b", status_code=400, headers={"x-should-retry": "true"})
    assert no.retryable is False
    assert never_retry(no)
    assert yes.retryable is True
    assert not QuotaExceededError("q", headers={"x-should-retry": "true"}).retryable


def test_never_retry() -> None:
    assert never_retry(asyncio.CancelledError())
    assert never_retry(AuthenticationError("a"))
    assert never_retry(QuotaExceededError("q"))
    assert not never_retry(ServerError("s", status_code=500))
    assert not never_retry(ValueError())


def test_circuit_breaker_open_message() -> None:
    err = CircuitBreakerOpenError(retry_after=-5)
    assert "Circuit breaker is open" in str(err)
    assert err.retry_after == 0
    named = CircuitBreakerOpenError(retry_after=2.5, name="openai")
    assert "openai" in str(named)
    assert named.name == "openai"
    assert str(CircuitBreakerOpenError("custom")) == "custom"


def test_rate_limit_errors_carry_delays() -> None:
    assert RateLimitError("r").retry_after is None
    assert RateLimitError("r", retry_after=-1).retry_after == 0
    assert MaxWaitExceededError("l", retry_after=-1).retry_after == 0
    big = RequestTooLargeError("big", requested=10, capacity=5)
    assert (big.requested, big.capacity) == (10, 5)
    assert isinstance(big, ValueError)


@given(
    status=st.integers(min_value=100, max_value=599),
    body=st.one_of(
        st.none(), st.text(max_size=50), st.dictionaries(st.text(max_size=5), st.integers())
    ),
    retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=1e6)),
)
def test_errors_survive_pickling(status: int, body: object, retry_after: float | None) -> None:
    err = RateLimitError(
        "r", status_code=status, body=body, retry_after=retry_after, headers={"x-request-id": "i"}
    )
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is RateLimitError
    assert str(copy) == str(err)
    assert (copy.status_code, copy.body, copy.retry_after) == (status, err.body, err.retry_after)
    assert copy.headers["X-Request-Id"] == "i"


def test_server_error_carries_the_servers_delay() -> None:
    assert ServerError("s", status_code=503).retry_after is None
    err = ServerError("s", status_code=529, retry_after=-2)
    assert err.retry_after == 0
    assert pickle.loads(pickle.dumps(ServerError("s", retry_after=3))).retry_after == 3
