"""Fixtures of the hosting tests beyond tests/hosts/fixtures.py."""

from tests.provisioning.dns import hosting_dns  # noqa: F401  (a DNS server with A/AAAA/CNAME)
