import pytest
from django.core.exceptions import ImproperlyConfigured

from panel.env import (
    EMAIL_BACKENDS,
    env_bool,
    env_int,
    env_list,
    env_str,
    parse_email_url,
    read_or_create_secret,
)


def test_env_bool_accepts_the_usual_spellings(monkeypatch):
    for raw, expected in [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False)]:
        monkeypatch.setenv("FLAG", raw)
        assert env_bool("FLAG", not expected) is expected


def test_env_bool_rejects_anything_else_and_names_the_variable(monkeypatch):
    monkeypatch.setenv("DEBUG", "ture")
    with pytest.raises(ImproperlyConfigured, match="DEBUG='ture' is not a boolean"):
        env_bool("DEBUG", False)


def test_env_str_required_when_no_default(monkeypatch):
    monkeypatch.delenv("NOPE", raising=False)
    with pytest.raises(ImproperlyConfigured, match="NOPE is required"):
        env_str("NOPE")
    assert env_str("NOPE", "fallback") == "fallback"


def test_env_int_and_list_are_strict(monkeypatch):
    monkeypatch.setenv("N", "12x")
    with pytest.raises(ImproperlyConfigured, match="N='12x' is not an integer"):
        env_int("N", 1)
    monkeypatch.setenv("N", "-3")
    with pytest.raises(ImproperlyConfigured, match="below 0"):
        env_int("N", 1, minimum=0)
    monkeypatch.setenv("HOSTS", "a.example, b.example")
    assert env_list("HOSTS", []) == ["a.example", "b.example"]
    monkeypatch.setenv("HOSTS", "a.example,,b")
    with pytest.raises(ImproperlyConfigured, match="empty item"):
        env_list("HOSTS", [])


def test_email_url_forms():
    smtp = parse_email_url(
        "EMAIL_URL", "smtp+starttls://user%40x:p%2Fw@mail.example:2525?timeout=5"
    )
    assert smtp["EMAIL_HOST"] == "mail.example"
    assert smtp["EMAIL_PORT"] == 2525
    assert smtp["EMAIL_HOST_USER"] == "user@x"
    assert smtp["EMAIL_HOST_PASSWORD"] == "p/w"
    assert smtp["EMAIL_USE_TLS"] is True
    assert smtp["EMAIL_TIMEOUT"] == 5
    assert parse_email_url("E", "smtps://relay")["EMAIL_PORT"] == 465
    assert parse_email_url("E", "console:")["EMAIL_BACKEND"] == EMAIL_BACKENDS["console"]
    assert parse_email_url("E", "file:///var/mail/panel")["EMAIL_FILE_PATH"] == "/var/mail/panel"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("smtpx://host", "scheme 'smtpx'"),
        ("smtp://", "needs a host"),
        ("smtp://host?tls=1", "unknown options"),
        ("file://relative", "absolute path"),
    ],
)
def test_email_url_errors_say_what_is_wrong(url, message):
    with pytest.raises(ImproperlyConfigured, match=message):
        parse_email_url("EMAIL_URL", url)


def test_secret_file_is_generated_once_and_private(tmp_path):
    path = tmp_path / "state" / "secret_key"
    first = read_or_create_secret(path)
    assert len(first) >= 50
    assert read_or_create_secret(path) == first
    assert path.stat().st_mode & 0o777 == 0o600
