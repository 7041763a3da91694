"""ansible/ as a whole: ansible-lint's production profile, the playbooks' syntax with the
example inventory, and secrets only in encrypted vault files."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.ansible.fixtures import ANSIBLE, BIN, ansible_env

pytestmark = pytest.mark.ansible

PLAYBOOKS = [
    "site.yml",
    "db.yml",
    "db_failover.yml",
    "panel.yml",
    "hosting_node.yml",
    "asterisk_node.yml",
    "mail_node.yml",
]
EXAMPLE = ANSIBLE / "inventory" / "example"
EXAMPLE_VAULT = EXAMPLE / "group_vars" / "all" / "vault.yml"
# The example vault's password, as ansible/README.md says; real inventories have their own.
EXAMPLE_PASSWORD = "example"

VAULT_HEADER = "$ANSIBLE_VAULT;"
# A variable named like a secret, set to something in the clear: anything but nothing, a
# reference ({{ vault_... }}, {{ other_var }}) or an inline !vault value.
SECRET_ASSIGNMENT = re.compile(
    r"""^\s*(?:[-#]\s*)?["']?(?P<name>[A-Za-z0-9_.-]*(?:password|passwd|secret|secret_key|"""
    r"""api_key|token))["']?\s*[:=]\s*(?P<value>.*?)\s*(?:\s#.*)?$""",
    re.IGNORECASE,
)
HARMLESS_VALUE = re.compile(r"""^(|""|''|~|null|!vault\b.*|["']?\{\{.*)$""", re.IGNORECASE)
# Credentials inside a URL (postgres://user:password@host), unless the password is a reference.
URL_CREDENTIALS = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@{}]+:(?!\{\{)[^\s/@{}]+@", re.I)
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
# A vault_* variable defined in a YAML file (which must then be an encrypted one).
VAULT_DEFINITION = re.compile(r"^\s*vault_[A-Za-z0-9_]+\s*:", re.M)
VAULT_REFERENCE = re.compile(r"\{\{-?\s*(vault_[A-Za-z0-9_]+)")


@pytest.fixture
def vault_password(tmp_path: Path) -> Path:
    path = tmp_path / "vault-password"
    path.write_text(EXAMPLE_PASSWORD + "\n")
    path.chmod(0o600)
    return path


def ansible_files() -> list[Path]:
    return sorted(
        path
        for path in ANSIBLE.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )


def text_of(path: Path) -> str | None:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        return None


def run(command: list[str], *, vault_password: Path | None = None) -> subprocess.CompletedProcess:
    extra = {"ANSIBLE_VAULT_PASSWORD_FILE": str(vault_password)} if vault_password else {}
    return subprocess.run(
        command,
        cwd=ANSIBLE,
        env=ansible_env(**extra),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_ansible_lint_production_profile_passes(vault_password: Path) -> None:
    # From ansible/, where .ansible-lint is (profile: production); with the example vault's
    # password, so that the encrypted group_vars are read and checked too.
    done = run(
        [str(BIN / "ansible-lint"), "--profile", "production"], vault_password=vault_password
    )
    assert done.returncode == 0, done.stdout[-15000:] + done.stderr[-5000:]


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax_with_the_example_inventory(playbook: str, vault_password: Path) -> None:
    done = run(
        [
            str(BIN / "ansible-playbook"),
            "--syntax-check",
            "-i",
            str(EXAMPLE / "hosts.yml"),
            "--vault-password-file",
            str(vault_password),
            playbook,
        ]
    )
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]


def test_the_example_vault_decrypts_and_defines_every_vault_variable(
    vault_password: Path, tmp_path: Path
) -> None:
    """The example inventory resolves with the documented password, and every vault_* that a
    role or group file refers to has a (placeholder) value in the vault."""
    done = run(
        [
            str(BIN / "ansible-inventory"),
            "-i",
            str(EXAMPLE / "hosts.yml"),
            "--vault-password-file",
            str(vault_password),
            "--list",
        ]
    )
    assert done.returncode == 0, done.stderr[-5000:]
    inventory = json.loads(done.stdout)
    for group in ("panel", "hosting_nodes", "asterisk_nodes", "mail_nodes"):
        assert inventory[group]["hosts"], group
    hostvars = inventory["_meta"]["hostvars"]
    defined = {name for values in hostvars.values() for name in values if name.startswith("vault_")}
    assert {"vault_panel_secret_key", "vault_panel_db_password", "vault_panel_redis_password"} <= (
        defined
    )
    referenced = {
        name
        for path in ansible_files()
        if (text := text_of(path)) is not None
        for name in VAULT_REFERENCE.findall(text)
    }
    assert referenced - defined == set(), "referenced but not in the example vault"

    # With another password it is unreadable: it really is encrypted.
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not the example's\n")
    view = [str(BIN / "ansible-vault"), "view", "--vault-password-file"]
    assert run([*view, str(wrong), str(EXAMPLE_VAULT)]).returncode != 0
    assert "vault_panel_secret_key:" in run([*view, str(vault_password), str(EXAMPLE_VAULT)]).stdout


def test_vault_files_are_encrypted() -> None:
    vault_files = []
    for path in ansible_files():
        text = text_of(path)
        if text is None:
            continue
        named = path.name.startswith("vault") and path.suffix in (".yml", ".yaml")
        defines = path.suffix in (".yml", ".yaml") and VAULT_DEFINITION.search(text) is not None
        if named or defines:
            vault_files.append(path)
            assert text.startswith(VAULT_HEADER), f"{path.relative_to(ANSIBLE)} is not encrypted"
    assert EXAMPLE_VAULT in vault_files


def test_no_secret_in_the_clear() -> None:
    found = []
    for path in ansible_files():
        text = text_of(path)
        if text is None or text.startswith(VAULT_HEADER):
            continue
        where = path.relative_to(ANSIBLE)
        if PRIVATE_KEY.search(text):
            found.append(f"{where}: a private key")
        for number, line in enumerate(text.splitlines(), 1):
            # Python (the node agent the hosting role ships) names its checks PASSWORD = ...;
            # its secrets come from elsewhere, and only the other two checks apply.
            assignment = SECRET_ASSIGNMENT.match(line) if path.suffix != ".py" else None
            if assignment and not HARMLESS_VALUE.match(assignment.group("value")):
                found.append(f"{where}:{number}: {assignment.group('name')} in the clear")
            if URL_CREDENTIALS.search(line):
                found.append(f"{where}:{number}: a password in a URL")
    assert found == []


def test_the_secret_checks_catch_what_they_are_for() -> None:
    """The regular expressions above, on lines they must flag and lines they must pass."""
    flagged = [
        "panel_db_password: hunter2",
        '  vault_panel_secret_key: "s3cr3t"',
        "# redis_password = changeme",
        "SECRET_KEY=abc",
        "api_token: 12345",
        "panel_redis_password: hunter2  # a comment does not hide it",
    ]
    passed = [
        'panel_db_password: "{{ vault_panel_db_password }}"',
        "mail_node_relayhost_password: ''",
        "mail_node_relayhost_password: ",
        'panel_db_password: ""           # the PostgreSQL role\'s password',
        "smtp_sasl_password_maps = texthash:/etc/postfix/sasl_passwd",
        "SECRET_KEY={{ panel_secret_key }}",
        "vault_x: !vault |",
    ]
    for line in flagged:
        match = SECRET_ASSIGNMENT.match(line)
        assert match, line
        assert not HARMLESS_VALUE.match(match.group("value")), line
    for line in passed:
        match = SECRET_ASSIGNMENT.match(line)
        assert match is None or HARMLESS_VALUE.match(match.group("value")), line
    assert URL_CREDENTIALS.search("DATABASE_URL=postgres://panel:hunter2@db/panel")
    assert not URL_CREDENTIALS.search("DATABASE_URL=postgres://panel:{{ pw }}@db/panel")
    assert not URL_CREDENTIALS.search("smtp://127.0.0.1:2525")
