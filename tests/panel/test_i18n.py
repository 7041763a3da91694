"""English, German and Spanish for the shell, accounts and membership pages."""

from __future__ import annotations

import gettext
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse

from panel.models import AuditEntry
from tests.conftest import ROOT

LOCALES = ["de", "es"]


def msgids(path) -> set[str]:
    text = path.read_text()
    ids = set()
    for block in re.findall(r'^msgid ((?:".*"\n)+)', text, flags=re.M):
        ids.add("".join(re.findall(r'"(.*)"', block)))
    ids.discard("")
    return ids


@pytest.mark.parametrize("lang", LOCALES)
def test_catalog_is_complete_and_compiled(lang, tmp_path):
    po = ROOT / f"panel/locale/{lang}/LC_MESSAGES/django.po"
    stats = subprocess.run(
        ["msgfmt", "--check", "--statistics", "-o", str(tmp_path / "fresh.mo"), str(po)],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    assert "untranslated" not in stats, stats
    assert "fuzzy" not in stats, stats
    with (tmp_path / "fresh.mo").open("rb") as fresh, po.with_suffix(".mo").open("rb") as committed:
        assert dict(gettext.GNUTranslations(fresh)._catalog) == dict(  # type: ignore[attr-defined]
            gettext.GNUTranslations(committed)._catalog  # type: ignore[attr-defined]
        ), f"{po.with_suffix('.mo')} is stale: run manage.py compilemessages"


def test_every_string_of_the_shell_is_in_the_catalogs(tmp_path):
    """makemessages over a copy of the code finds nothing the catalogs lack.

    The copy comes first on PYTHONPATH, so its settings point LOCALE_PATHS into the copy and
    the repository's catalogs are never written.
    """
    copy = tmp_path / "src"
    for part in ["panel", "provisioning", "telephony", "newsletters"]:
        shutil.copytree(
            ROOT / part, copy / part, ignore=shutil.ignore_patterns("static", "__pycache__")
        )
    committed = {
        lang: (ROOT / f"panel/locale/{lang}/LC_MESSAGES/django.po").read_text() for lang in LOCALES
    }
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "panel.settings", "PYTHONPATH": str(copy)}
    # Not `python -m django`: that puts the cwd first on sys.path, where a module named like
    # a standard one (selectors.py) would shadow it.
    django_admin = str(Path(sys.executable).with_name("django-admin"))
    subprocess.run(
        [django_admin, "makemessages", "-l", "de", "-l", "es", "--no-obsolete"],
        cwd=copy,
        env=env,
        check=True,
        capture_output=True,
    )
    for lang in LOCALES:
        assert (ROOT / f"panel/locale/{lang}/LC_MESSAGES/django.po").read_text() == committed[lang]
        fresh = msgids(copy / f"panel/locale/{lang}/LC_MESSAGES/django.po")
        missing = fresh - msgids(ROOT / f"panel/locale/{lang}/LC_MESSAGES/django.po")
        assert not missing, f"{lang}: run makemessages and translate: {sorted(missing)}"


def test_language_switcher_changes_the_page_and_remembers_it(client, alice):
    client.force_login(alice)
    response = client.post(
        reverse("set_language"), {"language": "de", "next": reverse("dashboard")}
    )
    assert response.status_code == 302
    page = client.get(reverse("dashboard")).content.decode()
    assert '<html lang="de">' in page
    assert ">Übersicht</a>" in page
    alice.refresh_from_db()
    assert alice.language == "de"
    assert AuditEntry.objects.filter(owner=alice, action="account.language").exists()
    client.post(reverse("set_language"), {"language": "es", "next": reverse("membership")})
    assert "Membresía" in client.get(reverse("membership")).content.decode()


@pytest.mark.parametrize(("lang", "text"), [("de", "Anmelden"), ("es", "Iniciar sesión")])
def test_account_pages_are_translated(client, db, lang, text):
    page = client.get(reverse("account_login"), HTTP_ACCEPT_LANGUAGE=lang).content.decode()
    assert text in page


def test_decision_email_goes_out_in_the_members_language(db, carol, dave, mailoutbox):
    from panel import services
    from panel.tasks import send_application_decision
    from tests.conftest import pending_application

    dave.language = "es"
    dave.save(update_fields=["language"])
    application = pending_application(dave)
    services.membership_approve(application=application, actor=carol)
    send_application_decision(application.pk)
    assert "Bienvenida" in mailoutbox[0].subject
    assert "participación n.º" in mailoutbox[0].body
