"""headway._secrets: masking headers and values, redacting URLs."""

from headway._secrets import mask_headers, mask_value, redact_url


def test_mask_headers_and_values() -> None:
    assert mask_headers(None) == {}
    masked = mask_headers([("x-api-key", "sk-1"), ("Cookie", "a=b"), ("X-Other", "v")])
    assert masked == {"x-api-key": "***", "Cookie": "***", "X-Other": "v"}
    assert mask_value("Basic dXNlcg==") == "Basic ***"
    assert mask_value("sk-plain") == "***"


def test_redact_url() -> None:
    assert redact_url("https://api.example.com/v1?q=1") == "https://api.example.com/v1?q=1"
    assert redact_url("http://[::1") == "http://[::1"  # unparsable stays as it is
    assert "sk" not in redact_url("https://h/x?token=sk&key=sk")
