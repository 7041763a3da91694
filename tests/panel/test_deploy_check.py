"""With production values, `manage.py check --deploy` has nothing to say."""

import os
import secrets
import subprocess
import sys

from tests.conftest import ROOT


def run_check(tmp_path, **overrides):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DEBUG", "SECURE_SSL_REDIRECT", "EMAIL_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    }
    env.update(
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="panel.example.coop",
        CSRF_TRUSTED_ORIGINS="https://panel.example.coop",
        PANEL_BASE_URL="https://panel.example.coop",
        EMAIL_URL="smtp+starttls://panel:secret@relay.example.coop:587",
        BEHIND_TLS_PROXY="1",
        CACHE_URL="redis://127.0.0.1:6379/13",
        PANEL_STATE_DIR=str(tmp_path),
    )
    env.update(overrides)
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_prints_no_warning_with_production_env(tmp_path):
    result = run_check(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in output
    assert "WARNING" not in output


def test_check_deploy_warns_when_debug_is_on(tmp_path):
    result = run_check(tmp_path, DEBUG="1")
    assert result.returncode != 0
    assert "security.W018" in result.stdout + result.stderr


def test_a_bad_boolean_stops_the_process_with_the_variable_name(tmp_path):
    result = run_check(tmp_path, DEBUG="maybe")
    assert result.returncode != 0
    assert "DEBUG='maybe' is not a boolean" in result.stderr


def test_production_settings_send_the_policy(tmp_path):
    """The policy is a production setting, not a DEBUG effect: a production process sends it,
    even on the redirect to HTTPS, and the check above sees the middleware in place."""
    script = (
        "from django.test import Client\n"
        "c = Client(HTTP_HOST='panel.example.coop')\n"
        "print('plain', c.get('/').get('Content-Security-Policy'))\n"
        "print('tls', c.get('/', secure=True).get('Content-Security-Policy'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE"}}
    env.update(
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="panel.example.coop",
        BEHIND_TLS_PROXY="1",
        PANEL_STATE_DIR=str(tmp_path),
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = dict(
        line.split(" ", 1)
        for line in result.stdout.splitlines()
        if line.startswith(("plain ", "tls "))
    )
    for kind in ("plain", "tls"):
        assert "default-src 'self'" in lines[kind], result.stdout
        assert "'nonce-" in lines[kind], result.stdout
        assert "unsafe-inline" not in lines[kind], result.stdout
