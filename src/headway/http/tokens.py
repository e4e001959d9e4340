"""Estimate an LLM request's tokens before sending it, and read what it really used.

A request is reserved on a tokens-per-minute limit for its prompt (estimated) plus the
completion it may produce (``max_tokens``, ``max_completion_tokens`` or
``max_output_tokens``, times ``n``); the response's ``usage`` then settles the
reservation. The prompt estimate is a fast character heuristic (about four characters
per token, plus a few tokens per message) or, with ``method="tiktoken"`` (or ``"auto"``
once :func:`load_tiktoken` has loaded tiktoken's encoding), an exact count.

>>> estimate_tokens({"messages": [{"role": "user", "content": "Hello there!"}],
...                  "max_tokens": 100}, method="heuristic")
110
>>> usage_tokens({"usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}})
21
>>> usage_tokens({"usage": {"input_tokens": 5, "output_tokens": 7}})
12
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

__all__ = [
    "TokenMethod",
    "TokenUsage",
    "completion_budget",
    "estimate_tokens",
    "load_tiktoken",
    "usage_split",
    "usage_tokens",
]

TokenMethod = Literal["auto", "heuristic", "tiktoken"]

#: Characters per token in the heuristic (OpenAI's rule of thumb for English).
CHARS_PER_TOKEN = 4
#: Overhead tokens per chat message (role, separators), and per request (priming).
PER_MESSAGE = 4
PER_REQUEST = 3

_TEXT_KEYS = ("messages", "input", "prompt", "system", "instructions", "tools", "query", "text")
_TEXT_KEY_SET = frozenset(_TEXT_KEYS)
_BUDGET_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens", "num_predict")
_BUDGET_KEY_SET = frozenset((*_BUDGET_KEYS, "n", "options"))

_encoding: Any = None
_encoding_failed = False


def _tiktoken_encoding(load: bool) -> Any:
    """The cl100k encoding; loaded here only when ``load`` (tiktoken may download it)."""
    global _encoding, _encoding_failed
    if _encoding is not None or _encoding_failed or not load:
        return _encoding
    try:
        import tiktoken

        _encoding = tiktoken.get_encoding("cl100k_base")
    except Exception:  # not installed, or its encoding cannot be fetched (offline)
        _encoding_failed = True
    return _encoding


def load_tiktoken() -> bool:
    """Load tiktoken's encoding now; ``True`` when it is available for ``"auto"`` counts.

    The first load may download the encoding (blocking): in async code call it once at
    start-up with ``await asyncio.to_thread(load_tiktoken)``.
    """
    return _tiktoken_encoding(True) is not None


def _count_text(value: Any, counter: Any) -> tuple[int, int]:
    """(tokens, messages) in the text of ``value``: strings, lists, message dicts."""
    if isinstance(value, str):
        return counter(value), 0
    tokens = 0
    messages = 0
    if isinstance(value, Mapping):
        if "role" in value:
            messages += 1
        for key, item in value.items():
            if key in ("image_url", "image", "images", "source", "file"):
                tokens += 85  # a low-detail image; exact costs vary by model
            elif isinstance(item, str | list | Mapping) and key not in ("type", "role", "id"):
                t, m = _count_text(item, counter)
                tokens += t
                messages += m
    elif isinstance(value, list | tuple):
        for item in value:
            t, m = _count_text(item, counter)
            tokens += t
            messages += m
    return tokens, messages


def _heuristic(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN)


def completion_budget(payload: Mapping[str, Any], default: int = 0) -> int:
    """The most tokens the response may hold: ``max_tokens`` (or kin) times ``n``.

    >>> completion_budget({"max_completion_tokens": 50, "n": 2})
    100
    """
    budget: Any = None
    for key in _BUDGET_KEYS:
        budget = payload.get(key)
        if budget is not None:
            break
    if budget is None:
        options = payload.get("options")
        if isinstance(options, Mapping):
            budget = options.get("num_predict")
    numeric = type(budget) is int or (type(budget) is not bool and isinstance(budget, int | float))
    if not numeric or budget < 0:
        budget = default
    n = payload.get("n")
    if n is not None and type(n) is int and n > 1:
        budget *= n
    return budget if type(budget) is int else int(budget)


def estimate_tokens(
    payload: Mapping[str, Any] | None,
    *,
    method: TokenMethod = "auto",
    default_completion: int = 0,
) -> int:
    """Tokens to reserve for ``payload``: estimated prompt plus completion budget.

    Args:
        payload: the JSON body of a chat, completion, responses or embeddings request.
        method: ``"heuristic"`` (fast, about 4 characters per token), ``"tiktoken"``
            (exact for OpenAI models; loads tiktoken's encoding on first use, which may
            download it and blocks; the heuristic when unavailable) or ``"auto"`` (tiktoken
            once :func:`load_tiktoken` has loaded it, else the heuristic; never blocks).
        default_completion: tokens to reserve for the completion when the payload sets
            no ``max_tokens``.
    """
    if not payload:
        return 0
    counter = _heuristic
    if method != "heuristic":
        enc = _tiktoken_encoding(method == "tiktoken")
        if enc is not None:
            encode = enc.encode_ordinary

            def counter(text: str) -> int:
                return len(encode(text))

    tokens = 0
    messages = 0
    budgeted = False
    heuristic = counter is _heuristic
    for key, value in payload.items():
        if key not in _TEXT_KEY_SET or value is None:
            budgeted = budgeted or key in _BUDGET_KEY_SET
            continue
        if key == "messages" and type(value) is list:
            for msg in value:
                # fast path: {"role": ..., "content": "text"}
                content = msg.get("content") if type(msg) is dict and len(msg) == 2 else None
                if type(content) is str:
                    tokens += -(-len(content) // CHARS_PER_TOKEN) if heuristic else counter(content)
                    messages += 1
                else:
                    t, m = _count_text(msg, counter)
                    tokens += t
                    messages += m
            continue
        t, m = _count_text(value, counter)
        tokens += t
        messages += m
    prompt = tokens + messages * PER_MESSAGE + (PER_REQUEST if messages else 0)
    if not budgeted:
        return prompt + default_completion
    return prompt + completion_budget(payload, default_completion)


class TokenUsage(NamedTuple):
    """What a response says it used, split: prompt (cached included), completion, cached.

    ``total`` is the server's own total when it gives one, else prompt + completion.
    """

    prompt: int
    completion: int
    cached: int
    total: int


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def usage_split(body: Any) -> TokenUsage | None:
    """The tokens a response used, split, or ``None`` when it does not say.

    The one place headway reads ``usage``: the limiter settles from it and the batch
    summary counts it. Understands OpenAI chat (``prompt_tokens`` with
    ``prompt_tokens_details.cached_tokens``), the Responses API (``input_tokens`` with
    ``input_tokens_details.cached_tokens``), Anthropic (``input_tokens`` *plus*
    ``cache_read_input_tokens`` and ``cache_creation_input_tokens``, which Anthropic counts
    apart) and Ollama's native ``prompt_eval_count`` / ``eval_count``.

    >>> usage_split({"usage": {"prompt_tokens": 90, "completion_tokens": 10,
    ...   "total_tokens": 100, "prompt_tokens_details": {"cached_tokens": 64}}})
    TokenUsage(prompt=90, completion=10, cached=64, total=100)
    >>> usage_split({"usage": {"input_tokens": 5, "output_tokens": 7,
    ...   "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}})
    TokenUsage(prompt=125, completion=7, cached=100, total=132)
    >>> usage_split({"prompt_eval_count": 26, "eval_count": 290})
    TokenUsage(prompt=26, completion=290, cached=0, total=316)
    >>> usage_split({"id": "x"}) is None
    True
    """
    if type(body) is not dict and not isinstance(body, Mapping):
        return None
    usage = body.get("usage")
    if type(usage) is dict and "cache_read_input_tokens" not in usage:
        # Fast path: OpenAI's chat shape, plain ints.
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        total = usage.get("total_tokens")
        if type(prompt) is int and type(completion) is int and type(total) is int:
            details = usage.get("prompt_tokens_details")
            cached = details.get("cached_tokens") if type(details) is dict else None
            return TokenUsage(prompt, completion, cached if type(cached) is int else 0, total)
    if usage is not None and (type(usage) is dict or isinstance(usage, Mapping)):
        get = usage.get
        if "prompt_tokens" in usage or "completion_tokens" in usage:
            prompt, completion = _int(get("prompt_tokens")), _int(get("completion_tokens"))
            details = get("prompt_tokens_details")
        elif "input_tokens" in usage or "output_tokens" in usage:
            prompt, completion = _int(get("input_tokens")), _int(get("output_tokens"))
            details = get("input_tokens_details")
        elif "total_tokens" in usage:  # embeddings elsewhere: a total alone
            total = _int(get("total_tokens"))
            return TokenUsage(total, 0, 0, total)
        else:
            return None
        cached = 0
        if isinstance(details, Mapping):
            cached = _int(details.get("cached_tokens"))
        read = get("cache_read_input_tokens")
        created = get("cache_creation_input_tokens")
        if read is not None or created is not None:  # Anthropic: cache apart from input
            cached = _int(read)
            prompt += cached + _int(created)
        given = get("total_tokens")
        total = _int(given) if given is not None else prompt + completion
        return TokenUsage(prompt, completion, cached, total)
    if "eval_count" in body or "prompt_eval_count" in body:
        prompt = completion = 0
        with contextlib.suppress(TypeError, ValueError):
            prompt = int(body.get("prompt_eval_count") or 0)
        with contextlib.suppress(TypeError, ValueError):
            completion = int(body.get("eval_count") or 0)
        return TokenUsage(prompt, completion, 0, prompt + completion)
    return None


def usage_tokens(body: Any) -> int | None:
    """Tokens a response says it used (``usage``), or ``None`` when it does not say.

    The total of :func:`usage_split`: OpenAI's ``total_tokens`` (else prompt +
    completion), Anthropic's input, output and cache tokens, Ollama's
    ``prompt_eval_count`` + ``eval_count``.
    """
    split = usage_split(body)
    return None if split is None else split.total
