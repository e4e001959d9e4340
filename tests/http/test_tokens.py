"""headway.http.tokens: token estimates, completion budgets and usage counts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from headway.http import completion_budget, estimate_tokens, load_tiktoken, usage_tokens


def test_token_estimates_cover_shapes() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "abcd", "name": "bob"},
            "loose text!",
            {"role": "tool", "content": None},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": "bc"}}}],
        "input": ("abcd", "abcd"),
        "system": "abcd",
    }
    assert estimate_tokens(body, method="heuristic") > 10
    assert estimate_tokens({"messages": "just a string"}, method="heuristic") == 4


def test_estimate_tokens_heuristic() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "x" * 40},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "y" * 8},
                    {"type": "image_url", "image_url": {"url": "u"}},
                ],
            },
        ],
        "max_tokens": 10,
    }
    # 10 + 2 + 85 (image) + 2 messages * 4 + 3 + 10
    assert estimate_tokens(body, method="heuristic") == 10 + 2 + 85 + 8 + 3 + 10
    assert estimate_tokens({"input": ["abcd", "efgh"]}, method="heuristic") == 2
    assert (
        estimate_tokens({"prompt": "abcdefgh", "n": 3, "max_tokens": 5}, method="heuristic")
        == 2 + 15
    )
    assert estimate_tokens(None) == 0
    assert estimate_tokens({}, method="heuristic") == 0
    assert estimate_tokens({"prompt": "abc"}, method="heuristic", default_completion=7) == 8


def test_estimate_tokens_auto_and_tiktoken_fall_back_or_count() -> None:
    body = {"messages": [{"role": "user", "content": "hello world " * 20}]}
    for method in ("auto", "tiktoken"):
        n = estimate_tokens(body, method=method)  # type: ignore[arg-type]
        assert 20 <= n <= 80
    assert load_tiktoken() in (True, False)  # offline here: False, and the heuristic stays


def test_completion_budget() -> None:
    assert completion_budget({"max_output_tokens": 9}) == 9
    assert completion_budget({"options": {"num_predict": 4}}) == 4
    assert completion_budget({"max_tokens": -1}, default=3) == 3
    assert completion_budget({"max_tokens": "x"}) == 0


def test_usage_tokens() -> None:
    assert usage_tokens({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}) == 7
    assert (
        usage_tokens(
            {"usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 5}}
        )
        == 12
    )
    assert usage_tokens({"usage": {}}) is None
    assert usage_tokens({"prompt_eval_count": 2, "eval_count": 5}) == 7
    assert usage_tokens([1]) is None
    assert usage_tokens({"choices": []}) is None


texts = st.text(max_size=200)


@given(a=texts, b=texts, budget=st.integers(0, 10_000))
def test_estimate_grows_with_content_and_budget(a: str, b: str, budget: int) -> None:
    def body(text: str, max_tokens: int) -> dict[str, object]:
        return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}

    base = estimate_tokens(body(a, 0), method="heuristic")
    assert base >= 1 + 4 if a else base >= 4
    assert estimate_tokens(body(a + b, 0), method="heuristic") >= base
    assert estimate_tokens(body(a, budget), method="heuristic") == base + budget
