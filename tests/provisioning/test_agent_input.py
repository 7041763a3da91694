"""The agent's input as an attacker who owns the panel would write it.

Every pattern must match the whole value: ``$`` also matches before a trailing newline, so
"a\\n.com" passed as a domain and nginx read ``server_name a .com;`` (``.com`` is nginx's
wildcard for every .com name). Each validator is fed newlines, NUL, other control characters
and non-ASCII; Hypothesis feeds the agent random JSON, overlong input and wrong types. The
answer is always one JSON line refusing permanently, with the field named.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from provisioning import ssh, validation
from provisioning.agent import panel_agent
from provisioning.services import endpoint_for

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBKHY72knJqwUB6UqRBlg0yk36lFXrzY6fdrYYCyKtJQ me@laptop"
# One valid request per verb; each test spoils one field of it at a time.
VALID: dict[str, dict[str, Any]] = {
    "site.ensure": {
        "user": "s1",
        "domains": ["a.example.org", "www.a.example.org"],
        "kind": "static",
        "state": "active",
        "quota_mb": 100,
        "tls": False,
        "keys": [KEY],
    },
    "site.suspend": {"user": "s1", "domains": ["a.example.org"], "kind": "php", "quota_mb": 100},
    "site.resume": {"user": "s1", "domains": ["a.example.org"], "kind": "php", "quota_mb": 100},
    "site.remove": {"user": "s1"},
    "site.purge": {"user": "s1"},
    "key.ensure": {"user": "s1", "keys": [KEY]},
    "db.ensure": {
        "user": "s1",
        "engine": "mariadb",
        "name": "s1_1",
        "db_user": "s1_1",
        "password": "Abcdefghijklmnop_-123",
    },
    "cert.ensure": {
        "user": "s1",
        "domains": ["a.example.org"],
        "directory": "https://acme.example.org:14000/dir",
        "email": "hostmaster@example.org",
    },
    "node.facts": {},
    "usage.report": {},
}
# What a trailing "$" let through, and its relatives.
BAD = [
    "\n",
    "\r",
    "\r\n",
    "\x00",
    "\t",
    "\x0b",
    "\x0c",
    "\x1b",
    "\x7f",
    "\x85",
    "\u2028",
    "\ufeff",
    "é",
    "\uff47",  # fullwidth g
    "\u0261",  # Latin small letter script g
]


def request(verb: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"uuid": str(uuid.uuid4()), "verb": verb, "spec": spec}


def string_leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths to every string in a request (dict keys and list indexes)."""
    if isinstance(value, str):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in string_leaves(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in string_leaves(v, (*path, i))]
    return []


def spoiled(base: dict[str, Any], path: tuple[Any, ...], how: str, bad: str) -> dict[str, Any]:
    copied = copy.deepcopy(base)
    parent = copied
    for step in path[:-1]:
        parent = parent[step]
    value = parent[path[-1]]
    middle = len(value) // 2
    parent[path[-1]] = {
        "after": value + bad,
        "before": bad + value,
        "inside": value[:middle] + bad + value[middle:],
    }[how]
    return copied


def test_the_valid_requests_are_valid():
    for verb, spec in VALID.items():
        assert panel_agent.validate(request(verb, spec))["verb"] == verb


@pytest.mark.parametrize("verb", sorted(VALID))
def test_every_agent_field_refuses_control_characters_and_non_ascii(verb):
    base = request(verb, VALID[verb])
    accepted = []
    for path in string_leaves(base):
        for bad in BAD:
            for how in ("after", "before", "inside"):
                try:
                    panel_agent.validate(spoiled(base, path, how, bad))
                except panel_agent.Refused:
                    continue
                accepted.append((path, how, bad))
    assert accepted == []


@pytest.mark.parametrize(
    "names",
    [["a\n.com"], [".com"], ["a.org\n"], ["a.org", "b\n.com"], ["*.com"], ["a.org\x00"]],
)
def test_the_com_wildcard_and_its_relatives_are_no_domain(names):
    spec = {**VALID["site.ensure"], "domains": names}
    with pytest.raises(panel_agent.Refused, match=r"domains\[\d\]"):
        panel_agent.validate(request("site.ensure", spec))


def test_no_pattern_of_the_agent_or_the_panel_can_end_before_a_newline():
    """Every pattern is used with fullmatch; one anchored with ``$`` (or matched with
    ``match``/``search``) would be one trailing newline away from the hole above."""
    for module in (panel_agent, validation):
        source = Path(module.__file__ or "").read_text()
        for name, value in vars(module).items():
            if isinstance(value, re.Pattern):
                assert not value.pattern.endswith("$"), (module.__name__, name)
                assert f"{name}.match(" not in source, (module.__name__, name)
                assert f"{name}.search(" not in source, (module.__name__, name)


@pytest.mark.parametrize("bad", BAD)
def test_the_panels_validators_refuse_or_clean_every_odd_character(bad):
    """Surrounding whitespace of a paste is trimmed; anything else odd is refused. What comes
    back is plain ASCII the agent takes."""
    for good in ["example.org", "bücher.example"]:
        for value in (good + bad, bad + good, good[:3] + bad + good[3:]):
            try:
                name = validation.clean_domain(value)
            except ValidationError:
                continue
            assert panel_agent.domain(name, "domain") == name, (value, name)
    for value in (KEY + bad, bad + KEY, KEY[:30] + bad + KEY[30:]):
        try:
            line, _fingerprint = validation.clean_public_key(value)
        except ValidationError:
            continue
        assert panel_agent.KEY.fullmatch(line), (value, line)


# The agent's whole entry point, in-process: main() with stdin and stdout of our own.


@pytest.fixture
def agent_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An unprivileged agent whose every directory is under tmp_path (as the demo's is)."""
    root = tmp_path / "node"
    config = {
        "privileged": False,
        "sites_root": str(root / "sites"),
        "vhost_dir": str(root / "vhosts"),
        "state_dir": str(root / "state"),
        "backup_dir": str(root / "backups"),
        "log_dir": str(root / "logs"),
        "keys_dir": str(root / "keys"),
        "php_pool_dir": str(root / "php"),
        "pages_dir": str(root / "pages"),
        "nginx": ["false"],
        "php_fpm_reload": ["true"],
    }
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(config))
    monkeypatch.setattr(panel_agent, "CONFIG_PATH", path)
    return root


def run_main(raw: bytes) -> tuple[int, dict[str, Any], str]:
    """The agent's main() on ``raw`` as stdin: exit code, its one answer, and stderr."""
    stdin = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    old = sys.stdin
    sys.stdin = stdin
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = panel_agent.main(["panel-agent"])
    finally:
        sys.stdin = old
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, out.getvalue()
    return code, json.loads(lines[0]), err.getvalue()


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000, "not JSON"),
        (b'{"uuid": 1' + b"0" * 5000 + b"}", "not JSON"),
        (b'{"uuid": NaN}', "not JSON"),
        (b" " * (panel_agent.MAX_REQUEST + 1), "too large"),
        (b'{"verb": [], "uuid": "x"}', "verb"),
        (b'{"verb": {}, "uuid": "x"}', "verb"),
        (
            b'{"verb": "site.ensure", "uuid": "' + str(uuid.uuid4()).encode() + b'", "spec": []}',
            "spec",
        ),
        (
            b'{"verb": "site.ensure", "uuid": "'
            + str(uuid.uuid4()).encode()
            + b'", "spec": {"user": ["s1"]}}',
            "'user'",
        ),
    ],
)
def test_malformed_input_is_refused_permanently_without_a_traceback(agent_config, raw, says):
    code, answer, err = run_main(raw)
    assert code == 1
    assert answer["ok"] is False
    assert answer["permanent"] is True, answer
    assert says in answer["error"], answer
    assert "Traceback" not in err
    assert files_under(agent_config) == []


JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=300)
    | st.sampled_from(["s1", "s1_1", "a.example.org", "postgres", "a\n.com", KEY, "static"])
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)
FIELDS = sorted({field for spec in VALID.values() for field in spec})


@st.composite
def agent_requests(draw: st.DrawFn) -> Any:
    """Mostly almost-valid requests (a real verb and known fields with odd values), some
    entirely random JSON: the near misses are the ones that reach deep into validate()."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON_VALUES)
    verb = draw(st.sampled_from(sorted(VALID)))
    spec = copy.deepcopy(VALID[verb])
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3)):
        spec[name] = draw(JSON_VALUES)
    body: dict[str, Any] = {
        "uuid": draw(st.sampled_from([str(uuid.uuid4()), 7, "x"])),
        "verb": verb,
    }
    body["spec"] = spec
    return body


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=agent_requests())
def test_random_json_is_refused_with_the_field_named_and_nothing_done(agent_config, body):
    try:
        panel_agent.validate(body)
    except panel_agent.Refused:
        pass
    else:
        assume(False)  # a valid request after all (the other tests run those for real)
    before = files_under(agent_config)
    code, answer, err = run_main(json.dumps(body).encode(errors="surrogatepass"))
    assert "Traceback" not in err
    assert code == 1
    assert answer["ok"] is False
    # Every refusal is permanent; a transient failure here would be a crash in disguise.
    assert answer["permanent"] is True, (body, answer)
    assert re.search(r"field|spec|request|verb|domains|keys|uuid", answer["error"]), answer
    assert files_under(agent_config) == before


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=2000) | st.text(max_size=2000).map(str.encode))
def test_random_bytes_never_crash_the_agents_parser(raw):
    try:
        request = json.loads(raw)
    except (ValueError, RecursionError):
        return
    with contextlib.suppress(panel_agent.Refused):
        panel_agent.validate(request)


# Over SSH, as a compromised panel would send them.


@pytest.mark.django_db(transaction=True)
def test_a_com_wildcard_never_reaches_the_nodes_nginx(node, testhost):
    before = testhost.run(["sh", "-c", "cat /etc/nginx/panel-sites/*.conf 2>/dev/null; true"])
    for names in (["a\n.com"], ["x.example.org", "b\n.com"], ["c.example.org\n"]):
        body = request("site.ensure", {**VALID["site.ensure"], "user": "s999998", "domains": names})
        with pytest.raises(ssh.AgentError, match=r"domains\[\d\]") as refused:
            ssh.call_agent(endpoint_for(node), body)
        assert refused.value.permanent
    after = testhost.run(["sh", "-c", "cat /etc/nginx/panel-sites/*.conf 2>/dev/null; true"])
    assert after == before
    assert ".com" not in after
    assert not testhost.exists("/srv/sites/s999998")
    assert testhost.http("anything.com")[0] == 404
