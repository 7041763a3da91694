"""The Asterisk node role for real, on a bare host, with Asterisk already "installed" (none).

The dialplan is the panel's: the role runs manage.py asterisk_dialplan on the controller (this
machine) against the panel's database, which here is the test database, and installs what it
prints. Debian 12 has no Asterisk package and a source build takes too long for a test, so the
host has no Asterisk binary and the role skips the reload.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from telephony.models import AccessNumber
from tests.ansible.fixtures import ROOT, PlaybookRun, run_playbook

pytestmark = pytest.mark.ansible

AGI = "panel.test.example:4573"


@pytest.fixture
def panel_environment(
    transactional_db: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> dict[str, str]:
    """The panel's environment for commands run on the controller: the test database."""
    db = connection.settings_dict
    values = {
        "DATABASE_URL": (
            f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        ),
        "SECRET_KEY": settings.SECRET_KEY,
        "PANEL_STATE_DIR": str(tmp_path / "state"),
    }
    # ansible-playbook inherits the test's environment, and the delegated command inherits
    # ansible-playbook's, as it does from the panel's service when the panel runs a playbook.
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def dialplan() -> str:
    """What the panel prints for the same arguments."""
    done = subprocess.run(
        [sys.executable, "manage.py", "asterisk_dialplan", "--agi", AGI],
        cwd=ROOT,
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_asterisk_node_installs_the_panels_dialplan_and_is_idempotent(
    bare_host, deploy_key, tmp_path: Path, panel_environment: dict[str, str], artifacts: Path
) -> None:
    AccessNumber.objects.create(number="+4930900900", city="Berlin", country="DE")
    AccessNumber.objects.create(
        number="+33170000000", city="Paris", country="FR", context="dialin-fr"
    )

    def run(name: str) -> PlaybookRun:
        return run_playbook(
            "asterisk_node.yml",
            bare_host,
            deploy_key,
            group="asterisk_nodes",
            extra_vars={"asterisk_node_install": "none", "asterisk_node_agi": AGI},
            workdir=tmp_path / name,
        )

    first = run("first")
    assert first.returncode == 0, first.output[-5000:]
    expected = dialplan()
    assert "[dialin]" in expected
    assert "[dialin-fr]" in expected
    assert f"AGI(agi://{AGI}/authorize,+33170000000,${{CALLERID(num)}})" in expected
    installed = bare_host.run(["cat", "/etc/asterisk/extensions_panel.conf"])
    assert installed == expected
    extensions = bare_host.run(["cat", "/etc/asterisk/extensions.conf"])
    assert "#include extensions_panel.conf" in extensions.splitlines()
    # No Asterisk on the host: nothing to reload, and nothing tried.
    assert not bare_host.exists("/usr/sbin/asterisk")

    second = run("second")
    assert second.returncode == 0, second.output[-5000:]
    assert second.changed() == 0, second.recap_line()

    # A new access number in the panel: the next run installs it, and only that changes.
    AccessNumber.objects.create(number="+4940900900", city="Hamburg", country="DE")
    third = run("third")
    assert third.returncode == 0, third.output[-5000:]
    assert third.changed() == 1, third.recap_line()
    installed = bare_host.run(["cat", "/etc/asterisk/extensions_panel.conf"])
    assert installed == dialplan()
    assert "+4940900900" in installed
    (artifacts / "ansible-asterisk_node.txt").write_text(
        "".join(
            f"{name} run: {result.seconds:.1f} s\n{result.recap_line()}\n"
            for name, result in (("first", first), ("second", second), ("third", third))
        )
    )
