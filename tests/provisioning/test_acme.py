"""Certificates without root: lego runs as a user of its own, and the directory it answers
HTTP-01 challenges from is out of the member's reach.

A member who can write where lego (as root) writes the challenge can point that path
anywhere on the node with a symlink; and one who can write the challenge directory nginx
serves can answer challenges for names that are not theirs.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest

from provisioning import services
from provisioning.models import JobState
from tests.hosts.fixtures import run_jobs
from tests.hosts.testhost import TestHost

pytestmark = pytest.mark.django_db(transaction=True)


def as_user(host: TestHost, user: str, script: str) -> str:
    """Run a shell snippet as ``user`` (the site users have no login shell)."""
    return host.run(
        ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "sh", "-c", script],
        check=False,
    )


def test_lego_runs_unprivileged_and_the_member_cannot_touch_the_challenges(
    alice, node, testhost, settings
):
    settings.ACME_DIRECTORY_URL = testhost.acme_directory
    site = services.site_create(member=alice, domain="acme.example.org")
    run_jobs(site)
    services.cert_request(site=site, actor=alice)
    jobs = run_jobs(site)
    assert all(job.state == JobState.OK for job in jobs), [job.error for job in jobs]
    user = site.system_user
    vhost = testhost.run(["cat", f"/etc/nginx/panel-sites/{user}.conf"])

    # nginx answers challenges from a directory outside the site, which the member cannot
    # write into, nor replace: neither it nor any directory above it is theirs.
    found = re.search(r"location \^~ /\.well-known/acme-challenge/ \{ root ([^;]+);", vhost)
    assert found, vhost
    webroot = PurePosixPath(found.group(1))
    assert not webroot.is_relative_to(f"/srv/sites/{user}"), webroot
    challenges = webroot / ".well-known" / "acme-challenge"
    for path in [challenges, *challenges.parents]:
        if testhost.exists(str(path)):
            writable = as_user(testhost, user, f"test -w {path} && echo writable")
            assert writable.strip() == "", path
    as_user(
        testhost, user, f"mkdir -p {challenges} && echo forged > {challenges}/probe 2>/dev/null"
    )
    assert not testhost.exists(f"{challenges}/probe")
    assert testhost.http("acme.example.org", "/.well-known/acme-challenge/probe")[0] == 404

    # lego did not run as root: what it wrote belongs to a user of its own, the key is that
    # user's alone, and the site user cannot read it.
    cert = re.search(r"ssl_certificate ([^;]+);", vhost)
    key = re.search(r"ssl_certificate_key ([^;]+);", vhost)
    assert cert, vhost
    assert key, vhost
    owner, mode = testhost.run(["stat", "-c", "%U %a", key.group(1)]).split()
    assert owner not in ("root", user, "panel-agent"), owner
    assert mode == "600"
    assert testhost.run(["stat", "-c", "%U", cert.group(1)]).strip() == owner
    accounts = testhost.run(
        ["sh", "-c", f"find {PurePosixPath(cert.group(1)).parents[1]} -printf '%u\\n' | sort -u"]
    ).split()
    assert accounts == [owner], accounts
    assert as_user(testhost, user, f"cat {key.group(1)} 2>/dev/null") == ""
