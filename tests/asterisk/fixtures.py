"""Fixtures for tests against a real Asterisk (see pbx.py), registered in tests/conftest.py.

- ``asterisk_build``: the cached build (built on first use, a few minutes; never skipped).
- ``pbx``: the session's one Asterisk, shared by the tests that use it: started once, and
  after each test its channels are hung up, the panel dialplan emptied and the AstDB family
  ``panel`` cleared. A test that stops, kills or restarts Asterisk takes ``fresh_pbx``.
- ``fresh_pbx``: an Asterisk of the test's own, stopped at its end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.asterisk.build import BuildError, Installation, ensure_asterisk
from tests.asterisk.pbx import Pbx


@pytest.fixture(scope="session")
def asterisk_build() -> Installation:
    """The cached Asterisk build; a failure fails the test (a skip would hide it)."""
    try:
        return ensure_asterisk()
    except BuildError as exc:
        pytest.fail(f"no Asterisk for the tests: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def pbx_session(
    asterisk_build: Installation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pbx]:
    """The session's Asterisk process; tests take it through ``pbx``, which cleans up."""
    pbx = Pbx(asterisk_build, tmp_path_factory.mktemp("asterisk"))
    pbx.start()
    yield pbx
    pbx.close()


@pytest.fixture
def pbx(pbx_session: Pbx) -> Iterator[Pbx]:
    """The shared Asterisk, clean: no channels, no panel dialplan, no AstDB ``panel`` family.

    Function-scoped around the session's process, so that each test gets the cleanup; the
    process itself starts once per session.
    """
    if pbx_session.process is None or pbx_session.process.poll() is not None:
        # A test that was not meant to took it down; the next one still gets an Asterisk.
        pbx_session.restart()
    yield pbx_session
    pbx_session.reset()


@pytest.fixture
def fresh_pbx(
    asterisk_build: Installation, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pbx]:
    """An Asterisk of the test's own, for tests that stop, kill or restart it."""
    pbx = Pbx(asterisk_build, tmp_path_factory.mktemp("asterisk-fresh"))
    pbx.start()
    yield pbx
    pbx.close()
