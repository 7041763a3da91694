"""Debian's Chromium through Playwright, one for the whole session.

Every browser test also watches for Content-Security-Policy violations: a page the policy
breaks (an inline style or script, an htmx feature that needs eval) fails the test that
showed it, with what was blocked and where.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Runs in every document before its own scripts (Playwright injects it through the DevTools
# protocol, which the policy does not govern). The event carries what the console message
# may leave out (the directive, the sample); the binding reports it at once, and what the page
# still holds (a report on its way) is drained before a context closes.
WATCH_SCRIPT = """
(() => {
  const seen = [];
  Object.defineProperty(window, "__cspViolations", { value: seen });
  window.addEventListener("securitypolicyviolation", (e) => {
    const text = `${e.effectiveDirective} blocked ${e.blockedURI || "?"}` +
      ` in ${e.sourceFile || document.location.href}:${e.lineNumber}` +
      (e.sample ? ` (${e.sample})` : "");
    seen.push(text);
    if (typeof window.__reportCspViolation === "function") {
      // Reported: no longer the page's to keep.
      window.__reportCspViolation(text).then(() => {
        const at = seen.indexOf(text);
        if (at >= 0) seen.splice(at, 1);
      }, () => {});
    }
  }, true);
})();
"""
CONSOLE_MARKS = ("Content Security Policy", "Content-Security-Policy")


class CspWatch:
    """What the pages of one test reported, from the console and from the DOM event."""

    def __init__(self) -> None:
        self.violations: list[str] = []
        self.contexts: list[WatchedContext] = []

    def add(self, kind: str, text: str) -> None:
        entry = f"{kind}: {text}"
        if entry not in self.violations:
            self.violations.append(entry)

    def take(self) -> list[str]:
        """The violations so far, forgotten: for a test that provokes one on purpose."""
        for context in self.contexts:
            context.harvest()
        taken, self.violations = self.violations, []
        return taken


class WatchedContext:
    """A browser context whose pages report violations to the test's watch."""

    def __init__(self, context: Any, watch: CspWatch) -> None:
        self._context = context
        self._watch = watch
        self._closed = False
        context.add_init_script(WATCH_SCRIPT)
        context.expose_binding(
            "__reportCspViolation", lambda source, text: watch.add("event", str(text))
        )
        context.on("console", self._console)
        context.on("weberror", lambda error: self._text("page error", str(error.error)))

    def _console(self, message: Any) -> None:
        location = message.location or {}
        self._text("console", f"{message.text} [{location.get('url', '?')}]")

    def _text(self, kind: str, text: str) -> None:
        if any(mark in text for mark in CONSOLE_MARKS):
            self._watch.add(kind, text)

    def harvest(self) -> None:
        """Read what the open pages recorded, in case a report has not arrived yet."""
        if self._closed:
            return
        for page in self._context.pages:
            if page.is_closed():
                continue
            for frame in page.frames:
                try:
                    found = frame.evaluate("() => (window.__cspViolations || []).splice(0)")
                except Exception:  # noqa: S112  (a frame that navigated away or is gone)
                    continue
                for text in found:
                    self._watch.add("event", str(text))

    def close(self, **kwargs: Any) -> None:
        self.harvest()
        self._closed = True
        self._context.close(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


class WatchedBrowser:
    """The session's browser; contexts made through it are watched for the current test."""

    def __init__(self, browser: Any) -> None:
        self._browser = browser
        self.watch: CspWatch | None = None

    def new_context(self, **kwargs: Any) -> WatchedContext:
        if self.watch is None:
            raise RuntimeError("browser used outside a test")
        context = WatchedContext(self._browser.new_context(**kwargs), self.watch)
        self.watch.contexts.append(context)
        return context

    def new_page(self, **kwargs: Any) -> Any:
        # A page with a context of its own, watched like the others.
        return self.new_context(**kwargs).new_page()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._browser, name)


@pytest.fixture(scope="session")
def _chromium() -> Iterator[WatchedBrowser]:
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing; bin/test installs Debian's chromium package")
    # Playwright's sync API runs an event loop in this thread; Django refuses ORM calls from a
    # thread with a running loop unless told that this is deliberate.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            yield WatchedBrowser(browser)
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def csp_violations(_chromium: WatchedBrowser) -> Iterator[CspWatch]:
    """The test's watch; at teardown the test fails if any page reported a violation."""
    watch = CspWatch()
    _chromium.watch = watch
    try:
        yield watch
    finally:
        _chromium.watch = None
        for context in watch.contexts:
            context.harvest()
            if not context._closed:
                context.close()
    if watch.violations:
        pytest.fail(
            "Content-Security-Policy violations:\n" + "\n".join(watch.violations),
            pytrace=False,
        )


@pytest.fixture
def browser(_chromium: WatchedBrowser, csp_violations: CspWatch) -> WatchedBrowser:
    return _chromium
