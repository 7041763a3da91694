"""Hypothesis over the hosting forms, through the test client as a browser would post them.

Random Unicode, overlong values, control characters, several values for one field, missing
fields: never a 500 or a traceback, an error shown at the field it is about, nothing saved.
A value that happens to be valid may save, and then only in its cleaned form.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning import services
from provisioning.models import Job, Node, NodeStatus, Site, SiteAlias, SiteDatabase, SshKey
from provisioning.validation import clean_domain
from tests.provisioning.test_agent_input import BAD, KEY

pytestmark = pytest.mark.django_db(transaction=True)

ODD = st.sampled_from(
    ["", " ", "a" * 300, "x" * 10_000, "\x00", "a.org\n", "a\n.com", "é" * 64 + ".org", *BAD]
)
TEXT = st.text(max_size=400) | ODD | st.text(max_size=40).map(lambda t: t + ".example.org")
# What a form field receives: one value, several, or none at all.
VALUES = st.lists(TEXT, min_size=0, max_size=3)

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def fuzz_site(alice, held_jobs: None) -> Site:
    """A node in the database only (jobs wait in a queue nobody reads) and alice's site."""
    Node.objects.create(name="fuzz-node", status=NodeStatus.AVAILABLE, capacity=10_000)
    return services.site_create(member=alice, domain="fuzz.example.org")


def counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (Site, SiteAlias, SshKey, SiteDatabase, Job)
    }


def post(client, url: str, fields: dict[str, list[str]]) -> Any:
    data = {name: values for name, values in fields.items() if values}
    return client.post(url, data)


def check(response, before: dict[str, int], fields: dict[str, list[str]], ok: int) -> bool:
    """Refused with the error at a field it posted, nothing saved; or saved (``ok``)."""
    assert response.status_code in (200, 422, ok), response.status_code
    if response.status_code == ok and response.status_code not in (200, 422):
        return True
    page = response.content.decode()
    assert "Traceback" not in page
    assert any(f'id="id_{name}_errors"' in page for name in fields), page[-3000:]
    assert counts() == before
    return False


@FUZZ
@given(domain=VALUES, kind=st.lists(TEXT | st.sampled_from(["static", "php"]), max_size=2))
def test_the_site_form(client, alice, fuzz_site, domain, kind):
    client.force_login(alice)
    before = counts()
    fields = {"domain": domain, "kind": kind}
    if check(post(client, reverse("provisioning:index"), fields), before, fields, 302):
        assert Site.objects.filter(domain=clean_domain(domain[-1])).exists()


@FUZZ
@given(domain=VALUES)
def test_the_alias_form(client, alice, fuzz_site, domain):
    client.force_login(alice)
    before = counts()
    url = reverse("provisioning:alias_add", args=[fuzz_site.pk])
    if check(post(client, url, {"domain": domain}), before, {"domain": domain}, 302):
        assert SiteAlias.objects.filter(domain=clean_domain(domain[-1])).exists()


@FUZZ
@given(name=VALUES, public_key=st.lists(TEXT | st.sampled_from([KEY, f"{KEY}\n{KEY}"]), max_size=2))
def test_the_key_form(client, alice, fuzz_site, name, public_key):
    client.force_login(alice)
    before = counts()
    fields = {"name": name, "public_key": public_key}
    if check(post(client, reverse("provisioning:keys"), fields), before, fields, 302):
        assert SshKey.objects.filter(member=alice).exists()
        SshKey.objects.filter(member=alice).delete()  # the next example may add it again


@FUZZ
@given(engine=st.lists(TEXT, max_size=2))
def test_the_database_form(client, alice, fuzz_site, engine):
    client.force_login(alice)
    before = counts()
    url = reverse("provisioning:database_add", args=[fuzz_site.pk])
    check(post(client, url, {"engine": engine}), before, {"engine": engine}, 200)
