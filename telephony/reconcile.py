"""Calls whose end never reached a FastAGI server, settled from what Asterisk kept.

A call's hangup handler writes what to bill into Asterisk's own database (AstDB, family
``panel``, key ``settle/UNIQUEID``) before it tries the FastAGI servers, and deletes it once
one of them said SETTLED=OK. Whatever is left there (every server down, restarting or full,
the panel's database blocked) is read here through the node's manager interface and settled
the same way, then deleted. The callee's answer is kept there too (``answer/UNIQUEID``):
a call cut by an Asterisk crash runs no hangup handler, and is billed from its answer to
the last time this job saw its channel up.

Calls still authorized whose channel is gone from the node (and whose settle is not
waiting there) are over: they free their hold and their place among the member's calls
within one pass, instead of waiting for the expiry at their limit plus ten minutes.

Why pull, and not an AMI listener or Asterisk's CDR: AstDB survives an Asterisk restart and a
panel outage alike, a pass is idempotent (guarded updates, settles once), and nothing has to
stay connected; the cost is a pass's delay, 30 s by default.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.utils import timezone

from panel.services import LedgerError
from telephony import services
from telephony.ami import ActionFailed, Ami, AmiError, AmiTarget, parse_url
from telephony.models import CallRecord, CallState, SettledBy

log = logging.getLogger(__name__)

NODE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
UNIQUEID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
EPOCH = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,6})?$")
FAMILY = "panel"
# A call is judged by its channel only if its record is older than the channel list, by
# this much: its channel existed before the record was written, so it was listed if it was
# up; the margin is for the clocks of the FastAGI hosts and this one, which may differ a
# little.
GRACE = timedelta(seconds=5)


def asterisk_nodes() -> dict[str, AmiTarget]:
    """ASTERISK_AMI as {node name: where to log in}; ImproperlyConfigured saying what is wrong."""
    nodes: dict[str, AmiTarget] = {}
    for item in settings.ASTERISK_AMI:
        name, sep, url = item.partition("=")
        if not sep or not NODE.match(name):
            raise ImproperlyConfigured(
                f"ASTERISK_AMI: {name[:40]!r} is not NAME=ami://USER:SECRET@HOST:PORT "
                f"with NAME matching {NODE.pattern}"
            )
        try:
            nodes[name] = parse_url(url)
        except ValueError as exc:
            raise ImproperlyConfigured(f"ASTERISK_AMI, node {name}: {exc}") from None
    return nodes


@dataclass
class Pass:
    """What one pass over a node found and did."""

    node: str
    live: int = 0
    settled: int = 0  # from the settles Asterisk kept
    gone: int = 0  # authorized calls whose channel was gone, ended here
    refused: int = 0  # kept entries that can never be settled (wrong token, no such call)
    failed: int = 0  # left for the next pass (the database refused)


def _epoch(text: str) -> Decimal | None:
    if not EPOCH.match(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _tree(ami: Ami, key: str) -> dict[str, str]:
    """AstDB entries under panel/KEY, by the last part of their key (the uniqueid)."""
    prefix = f"/{FAMILY}/{key}/"
    found = {}
    for item in ami.action_list("DBGetTree", Family=FAMILY, Key=key):
        full = item.get("Key", "")
        if item.get("Event") == "DBGetTreeResponse" and full.startswith(prefix):
            found[full[len(prefix) :]] = item.get("Val", "")
    return found


def calls_reconcile(*, node: str, ami: Ami, now: datetime | None = None) -> Pass:
    """One pass over one Asterisk node (see the module's docstring). Safe to repeat."""
    done = Pass(node=node)
    # Channels first, the kept settles after: a channel absent from the list has run its
    # hangup handler to the end, so its settle, if it wrote one, is in what is read next.
    now = now or timezone.now()
    live = {
        item["Uniqueid"]
        for item in ami.action_list("CoreShowChannels")
        if item.get("Event") == "CoreShowChannel" and "Uniqueid" in item
    }
    done.live = len(live)
    kept = _tree(ami, "settle")
    answers = _tree(ami, "answer")

    for uniqueid, value in kept.items():
        outcome = _settle_kept(uniqueid, value)
        if outcome == "failed":
            done.failed += 1
            continue
        setattr(done, outcome, getattr(done, outcome) + 1)
        _forget(ami, f"settle/{uniqueid}")
        if uniqueid in answers:
            _forget(ami, f"answer/{uniqueid}")
            del answers[uniqueid]

    calls = CallRecord.objects.filter(node=node, state=CallState.AUTHORIZED)
    calls.filter(uniqueid__in=live).update(seen_at=now)
    for call in calls.filter(started_at__lt=now - GRACE).exclude(uniqueid__in=live):
        if call.uniqueid in kept:
            continue  # its settle failed above; the next pass tries again
        if _end_unseen(call, answers.get(call.uniqueid, "")):
            done.gone += 1
        else:
            done.failed += 1
            continue
        if call.uniqueid in answers:
            _forget(ami, f"answer/{call.uniqueid}")
            del answers[call.uniqueid]

    # Answers of calls that ended some other way (settled, expired, not ours): not needed.
    if answers:
        open_ = set(
            CallRecord.objects.filter(
                uniqueid__in=list(answers), state=CallState.AUTHORIZED
            ).values_list("uniqueid", flat=True)
        )
        for uniqueid in answers:
            if uniqueid not in live and uniqueid not in open_:
                _forget(ami, f"answer/{uniqueid}")
    if done.settled or done.gone or done.refused or done.failed:
        log.info(
            "reconciled node %s: %d live, %d settled from Asterisk, %d ended unseen, "
            "%d refused, %d left for the next pass",
            node,
            done.live,
            done.settled,
            done.gone,
            done.refused,
            done.failed,
        )
    return done


def _forget(ami: Ami, key: str) -> None:
    """Delete panel/KEY from AstDB; gone already is fine.

    Between this pass's read and its delete, the call's own hangup handler may have got
    SETTLED=OK from a server and deleted the entry itself; that must not stop the pass.
    """
    try:
        ami.action("DBDel", Family=FAMILY, Key=key)
    except ActionFailed as exc:
        if exc.reason != "Database entry could not be deleted":
            raise


def _settle_kept(uniqueid: str, value: str) -> str:
    """Settle one kept hangup: "settled", "refused" (never can be) or "failed" (try again)."""
    parts = value.split("/")
    if not UNIQUEID.match(uniqueid) or len(parts) != 5:
        log.error("AstDB settle entry %r = %r is not ours; removed", uniqueid[:70], value[:200])
        return "refused"
    status, answered, ended, route, token = parts
    if not services.settle_token_valid(uniqueid, token):
        log.error("AstDB settle entry %s has a wrong token; removed", uniqueid)
        return "refused"
    try:
        services.call_settle(
            uniqueid=uniqueid,
            dial_status=re.sub(r"[^A-Z]", "", status)[:20],
            answered_at=_epoch(answered),
            ended_at=_epoch(ended),
            route=int(route) if route.isdigit() and len(route) < 3 else 1,
            settled_by=SettledBy.RECONCILIATION,
        )
    except CallRecord.DoesNotExist:
        log.error("AstDB settle entry %s names no call; removed", uniqueid)
        return "refused"
    except (DatabaseError, LedgerError) as exc:
        log.warning("settling kept call %s failed, next pass tries again: %s", uniqueid, exc)
        return "failed"
    return "settled"


def _end_unseen(call: CallRecord, answered: str) -> bool:
    """A call whose channel is gone without a hangup handler's settle (Asterisk stopped).

    Answered (Asterisk kept the callee's answer, "EPOCH/TRUNK"): billed at the rate of the
    trunk that answered, from the answer to the last time a
    pass saw the channel up, at least its first block; the carrier billed the co-op for it.
    Never answered: nothing, and its hold is freed.
    """
    answer_text, _, route = answered.partition("/")
    answer = _epoch(answer_text)
    ended = None
    if answer is not None:
        seen = Decimal(str(call.seen_at.timestamp())) if call.seen_at else answer
        # At least a millisecond: the callee answered, so the first block was carried.
        ended = max(seen, answer + Decimal("0.001"))
    try:
        services.call_settle(
            uniqueid=call.uniqueid,
            dial_status="ANSWER" if answer is not None else "GONE",
            answered_at=answer,
            ended_at=ended,
            route=int(route) if route.isdigit() and len(route) < 3 else 1,
            settled_by=SettledBy.CHANNEL_GONE,
        )
    except (DatabaseError, LedgerError) as exc:
        log.warning("ending unseen call %s failed, next pass tries again: %s", call.uniqueid, exc)
        return False
    return True


def reconcile_all() -> dict[str, Pass | str]:
    """One pass over every node of ASTERISK_AMI; a node out of reach waits for the next."""
    results: dict[str, Pass | str] = {}
    for node, target in asterisk_nodes().items():
        try:
            with Ami(target) as ami:
                results[node] = calls_reconcile(node=node, ami=ami)
        except AmiError as exc:
            log.warning("reconciling node %s (%s): %s", node, target, exc)
            results[node] = f"unreachable: {exc}"
    return results
