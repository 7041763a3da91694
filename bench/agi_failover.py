"""Benchmark of the dial-in's failover: two FastAGI servers under 100 call setups a second,
one SIGKILLed and one restarted with SIGTERM during the run. Is every connected call billed
for its connected time, once, and is no credit left held?

Sets up what it needs as bench/agi.py does (a PostgreSQL database of its own, a deck,
members with verified phones and credit), starts two ``manage.py fastagi`` processes on
loopback ports and plays calls at ``--rate`` (100/s) through ``telephony.asterisk_sim.Dialplan``,
the panel dialplan's behaviour around the FastAGI sessions: the servers in turn from a random
one for the authorize; for an authorized call the callee answers, stays connected 1-3 s, and
the hangup handler writes its settle to (in-memory) AstDB, tries each server twice and deletes
the entry when a server says SETTLED=OK. During the run a supervisor does what systemd and
a deploy do: at a quarter of the run it SIGKILLs server A and starts it again 3 s after it
died (the units' ``RestartSec=3``); once A listens again it stops server B with SIGTERM (the
server drains: it stops accepting, lets the sessions in progress finish, exits) and starts it
again, as the panel role restarts one server at a time. ``--overlap`` sends the SIGTERM while
A is still down instead: for a moment no server takes calls or hangups, the worst case (a
crash during a deploy). Afterwards the reconciliation (``telephony.reconcile.calls_reconcile``,
the beat's job) runs once against ``asterisk_sim.AmiServer``, the manager interface serving
the Dialplan's AstDB with no live channels (every call has ended), after the 10 s grace it
gives young calls. Then the figures, one line each:

- ``calls_total`` calls offered; ``calls_connected`` authorized and answered;
  ``calls_refused`` refused by a server (any reason, "try again later" included);
  ``calls_undecided`` no server decided (the caller heard custom/try-later).
- ``calls_unbilled``: connected calls whose record is not settled with their connected time
  (the dialplan's answer-to-end, to the millisecond) after the reconciliation. Goal 0.
- ``calls_billed_twice``: connected calls with more than one usage event, or a cost, billed
  seconds or usage amount other than the record's rate gives for the connected time. Goal 0.
- ``stuck_holds``: credit holds of this run's calls still held after the reconciliation.
  Goal 0.
- ``failover_gap_ms``: the longest time during which new calls got no decision (no server
  decided, or "try again later"): from the first such call's due time to the next call that
  was decided. 0 when every call was decided.
- ``settles_kept_in_astdb``: hangups no server took, left in AstDB for the reconciliation;
  ``reconcile_settled`` and ``reconcile_gone`` what the pass did with them and with calls
  whose channel was gone; ``settled_by_*`` how the connected calls' ends reached the panel.
- ``authorize_p50_ms``/``authorize_p99_ms``: from when a call was due to the decision,
  including failover to the other server; ``authorize_failovers`` calls decided by another
  server than the first one tried, ``settles_retried`` hangups settled on a later attempt.
- ``killed_server_back_s`` (SIGKILL to listening again, RestartSec included), ``drain_s``
  (SIGTERM to exit), ``terminated_server_back_s`` (SIGTERM to listening again).
- ``cpu`` (lscpu's model name) and ``load_before`` (1-minute load average at the start):
  the machine is a shared 2-core VM; the client, both servers and PostgreSQL share it.

Why through the simulator and not the real Asterisk of tests/asterisk: the settle design's
durability is AstDB plus the reconciliation, and both are exercised here over the same code
path: the FastAGI servers, the settle protocol and token, and ``calls_reconcile`` reading
AstDB and the channels through ``telephony.ami.Ami`` over a real socket. What the simulator
stands in for is the dialplan's few lines around the AGI() calls (tests/asterisk runs those
in Asterisk, end to end, with a server killed or stopped mid-call); a real Asterisk at 100
calls a second with scripted callers would measure Asterisk and its Local channels on these
2 cores more than the panel. ``--runs N`` repeats the scenario and prints medians (and, for
the goal-0 figures, the maximum as ``*_max``; ``*_per_run`` where runs differ).
``--server-args`` passes more arguments to
both servers (``--settle-sessions 64``, say); ``refused_reasons`` and ``server_warnings``
(counted over all runs) say which of a server's limits turned calls or hangups away.
``BENCH_VERBOSE=1`` prints, for each settle left in AstDB, where its attempts went.

    .venv/bin/python bench/agi_failover.py [--quick] [--overlap] [--runs N] [--rate R]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on the path; the project root goes there instead.
sys.path[0] = str(ROOT)

from bench.agi import (  # noqa: E402  (after the path fix above)
    Server,
    django_setup,
    free_port,
    scratch_database,
    seed,
    start_server,
    wait_listening,
)
from bench.common import cpu_model  # noqa: E402  (after the path fix above)

NODE = "bench"
RESTART_SEC = 3.0  # the service role's unit: Restart=on-failure, RestartSec=3
CONNECTED_S = (1.0, 3.0)
GOAL_ZERO = ("calls_unbilled", "calls_billed_twice", "stuck_holds")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="20 s of calls, 2,000 prefixes")
    parser.add_argument(
        "--overlap", action="store_true", help="SIGTERM server B while A is still down"
    )
    parser.add_argument("--runs", type=int, default=1, help="repeat, print medians")
    parser.add_argument("--rate", type=float, default=100.0, help="call setups per second")
    parser.add_argument(
        "--server-args",
        default="",
        help="more arguments for manage.py fastagi, e.g. '--settle-sessions 32'",
    )
    args = parser.parse_args()
    duration, prefixes = (20.0, 2_000) if args.quick else (60.0, 20_000)
    print(f"cpu: {cpu_model()}")
    print(f"load_before: {os.getloadavg()[0]:.2f}")
    with scratch_database() as database_url:
        env = django_setup(database_url)
        # Calls last up to 3 s after a setup: rate * 4 / 2 members keep each within 2-3 at
        # once, under the plan's 4.
        access, members, _ = seed(prefixes, int(args.rate * 4) // 2 + 1)
        extra = args.server_args.split()
        servers = [Supervised(free_port(), env, extra), Supervised(free_port(), env, extra)]
        try:
            for server in servers:
                server.start()
            results = [
                scenario(run, servers, access.number, members, args.rate, duration, args.overlap)
                for run in range(args.runs)
            ]
        finally:
            for server in servers:
                server.stop()
    print(f"runs: {args.runs}")
    print(f"duration_s: {duration:.0f}")
    print(f"offered_setups_per_s: {args.rate:.0f}")
    print(f"overlap: {int(args.overlap)}")
    print(f"server_args: {args.server_args or 'none'}")
    refusals = Counter(reason for r in results for reason in r.pop("refused_reasons"))
    warnings: Counter[str] = Counter()
    for server in servers:
        for process in server.processes:
            warnings.update(process.warnings)
    for name in results[0]:
        values = [r[name] for r in results]
        value = statistics.median(values)
        print(f"{name}: {value:.2f}" if isinstance(value, float) else f"{name}: {value}")
        if args.runs > 1 and name in GOAL_ZERO:
            print(f"{name}_max: {max(values)}")
        if len(set(values)) > 1:
            # A median of counts hides the run where something happened.
            shown = " ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in values)
            print(f"{name}_per_run: {shown}")
    # Why calls were refused and what the servers warned about, over all runs.
    print(f"refused_reasons: {_counts(refusals)}")
    print(f"server_warnings: {_counts(warnings)}")


def _counts(counter: Counter[str]) -> str:
    return "; ".join(f"{n} x {text}" for text, n in counter.most_common()) or "none"


class Supervised:
    """One FastAGI server process, started, killed and stopped as systemd would."""

    def __init__(self, port: int, env: dict[str, str], args: list[str]) -> None:
        self.port = port
        self.env = env
        self.args = args
        self.process: Server | None = None
        self.processes: list[Server] = []  # every one started, for their warnings

    def start(self) -> None:
        self.process = start_server(self.port, self.env, args=self.args)
        self.processes.append(self.process)
        wait_listening(self.port, self.process)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def terminate(self) -> float:
        """SIGTERM and wait for the exit (the server drains first); the seconds it took."""
        assert self.process is not None
        began = time.perf_counter()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)
        return time.perf_counter() - began

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@dataclass
class Outcome:
    """What happened to one call, as the simulated Asterisk saw it."""

    uniqueid: str
    due: float  # seconds from the start of the run
    latency_ms: float = 0.0
    decision: str = ""  # AUTH_RESULT, "" when no server decided
    reason: str = ""
    failovers: int = 0  # servers tried before the one that decided
    connected: Decimal | None = None  # answer to end, as the dialplan's timestamps say
    settled_by_hangup: bool = False
    settle_attempt: int = 0
    error: str = ""
    call: Any = None  # the simulated call, for BENCH_VERBOSE


@dataclass
class Timeline:
    """When the supervisor did what, in seconds from the start of the run."""

    marks: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def supervise(
    servers: list[Supervised], began: float, duration: float, overlap: bool, timeline: Timeline
) -> None:
    """SIGKILL server A at a quarter of the run, start it again RestartSec later; SIGTERM
    server B (once A listens again, or while it is down with ``overlap``) and start it again."""
    first, second = servers

    def at(seconds: float) -> None:
        time.sleep(max(0.0, began + seconds - time.perf_counter()))

    def now() -> float:
        return time.perf_counter() - began

    def restart_first() -> None:
        time.sleep(RESTART_SEC)
        first.start()
        timeline.marks["killed_back"] = now()

    try:
        at(duration * 0.25)
        timeline.marks["kill"] = now()
        first.kill()
        back = threading.Thread(target=restart_first)
        back.start()
        if overlap:
            at(timeline.marks["kill"] + 1.0)
        else:
            back.join()
            at(max(duration * 0.55, now() + 2.0))
        timeline.marks["term"] = now()
        timeline.marks["drain_s"] = second.terminate()
        second.start()
        timeline.marks["term_back"] = now()
        back.join()
    except Exception as exc:  # a server that does not come back must not hang the run
        timeline.errors.append(repr(exc))


def scenario(
    run: int,
    servers: list[Supervised],
    access: str,
    members: list[str],
    rate: float,
    duration: float,
    overlap: bool,
) -> dict[str, Any]:
    from django.db import connections

    from panel.models import CreditHold, UsageEvent
    from telephony import asterisk_sim, rating, reconcile
    from telephony.ami import Ami
    from telephony.models import CallRecord, CallState

    rng = random.Random(1000 + run)  # noqa: S311  (simulated call lengths)
    dialplan = asterisk_sim.Dialplan(
        [("127.0.0.1", s.port) for s in servers], node=NODE, timeout=15.0, rng=rng
    )
    count = int(rate * duration)
    lengths = [rng.uniform(*CONNECTED_S) for _ in range(count)]
    epoch = int(time.time())
    outcomes = [Outcome(uniqueid=f"{epoch}.{run}{i:06d}", due=i / rate) for i in range(count)]
    began = time.perf_counter() + 0.5
    timeline = Timeline()
    chaos = threading.Thread(
        target=supervise, args=(servers, began, duration, overlap, timeline), daemon=True
    )

    def one(i: int) -> None:
        outcome = outcomes[i]
        time.sleep(max(0.0, began + outcome.due - time.perf_counter()))
        call = asterisk_sim.Call(
            uniqueid=outcome.uniqueid,
            caller=members[i % len(members)],
            access=access,
            dtmf=[f"030{(i * 7919) % 10_000_000:07d}"],
        )
        outcome.call = call
        try:
            dialplan.authorize(call)
            outcome.latency_ms = (time.perf_counter() - began - outcome.due) * 1000
            variables = call.variables
            outcome.decision = variables.get("AUTH_RESULT", "")
            outcome.reason = variables.get("AUTH_REASON", "")
            outcome.failovers = int(variables.get("PANEL_ATTEMPT", "0"))
            if outcome.decision != "OK":
                return
            answered = time.time()
            dialplan.answered(call, at=answered)
            time.sleep(lengths[i])
            outcome.settled_by_hangup = dialplan.hangup(call, ended=answered + lengths[i])
            outcome.settle_attempt = int(variables.get("PANEL_ATTEMPT", "0"))
            outcome.connected = Decimal(variables["PANEL_END"]) - Decimal(
                variables["PANEL_ANSWER_TS"]
            )
        except Exception as exc:  # counted, not fatal: the run's figures say what went wrong
            outcome.error = repr(exc)

    chaos.start()
    with ThreadPoolExecutor(max_workers=int(rate * (CONNECTED_S[1] + 1)) + 64) as pool:
        list(pool.map(one, range(count)))
    chaos.join()
    if timeline.errors:
        raise RuntimeError(f"the supervisor failed: {timeline.errors}")

    # The beat's pass, once the youngest call is older than the grace the pass gives.
    last = max(o.due + o.latency_ms / 1000 for o in outcomes)
    grace = reconcile.GRACE.total_seconds()
    time.sleep(max(0.0, began + last + grace + 0.5 - time.perf_counter()))
    kept_keys = [key for key in dict(dialplan.astdb) if key.startswith("/panel/settle/")]
    kept = len(kept_keys)
    if os.environ.get("BENCH_VERBOSE"):
        # Each kept settle's AGI sessions: where it went and what the server said.
        by_id = {o.uniqueid: o for o in outcomes}
        for key in kept_keys:
            call = by_id[key.rsplit("/", 1)[1]].call
            said = [
                line
                for way, line in call.transcript
                if way == ">>" or line.startswith(("agi_request", "agi_arg_1:"))
            ]
            print(f"kept {key} = {dialplan.astdb.get(key)}: {said}", file=sys.stderr)
    ami_server = asterisk_sim.AmiServer(dialplan.astdb, dialplan.channels)
    with ami_server, Ami(ami_server.url) as ami:
        passed = reconcile.calls_reconcile(node=NODE, ami=ami)

    for error in sorted({o.error for o in outcomes if o.error})[:3]:
        print(f"call failed in the simulator: {error}", file=sys.stderr)
    connected = [o for o in outcomes if o.decision == "OK"]
    uniqueids = [o.uniqueid for o in outcomes]
    records = {r.uniqueid: r for r in CallRecord.objects.filter(uniqueid__in=uniqueids)}
    usage: dict[str, list[Decimal]] = {}
    for key, amount in UsageEvent.objects.filter(
        source_key__in=[f"hold:call:{u}" for u in uniqueids]
    ).values_list("source_key", "amount"):
        usage.setdefault(key, []).append(amount)
    unbilled = twice = 0
    settled_by: Counter[str] = Counter()
    for outcome in connected:
        record = records.get(outcome.uniqueid)
        if record is None or outcome.connected is None or record.state != CallState.SETTLED:
            unbilled += 1
            continue
        settled_by[record.settled_by] += 1
        seconds = min(outcome.connected, Decimal(record.limit_seconds))
        if record.connected_seconds != seconds.quantize(Decimal("0.001")):
            unbilled += 1
            continue
        billed = rating.billed_seconds(
            answered=seconds > 0,
            connected=seconds,
            initial=record.initial_seconds,
            increment=record.increment_seconds,
        )
        cost = rating.cost(
            billed=billed, per_minute=record.per_minute, connect_fee=record.connect_fee
        )
        events = usage.get(f"hold:{record.hold_key}", [])
        if len(events) > 1 or record.cost != cost or record.billed_seconds != billed:
            twice += 1
        elif cost > 0 and sum(events, Decimal(0)) != cost:
            # No usage event for a call that cost something: never charged.
            unbilled += 1
    stuck = CreditHold.objects.filter(
        key__in=[f"call:{u}" for u in uniqueids], state="held"
    ).count()
    still_open = sum(1 for r in records.values() if r.state == CallState.AUTHORIZED)
    connections.close_all()

    latencies = sorted(o.latency_ms for o in outcomes if not o.error)
    marks = timeline.marks
    return {
        "calls_total": count,
        "calls_connected": len(connected),
        "calls_refused": sum(1 for o in outcomes if o.decision == "REFUSED"),
        "calls_undecided": sum(1 for o in outcomes if not o.decision and not o.error),
        "calls_errors": sum(1 for o in outcomes if o.error),
        "refused_reasons": [o.reason for o in outcomes if o.decision == "REFUSED"],
        "calls_unbilled": unbilled,
        "calls_billed_twice": twice,
        "stuck_holds": stuck,
        "calls_still_open": still_open,
        "failover_gap_ms": _gap_ms(outcomes, duration),
        "settles_kept_in_astdb": kept,
        "reconcile_settled": passed.settled,
        "reconcile_gone": passed.gone,
        "reconcile_failed": passed.failed,
        "settled_by_hangup": settled_by["hangup"],
        "settled_by_reconciliation": settled_by["reconciliation"],
        "settled_by_channel_gone": settled_by["channel_gone"],
        "settled_by_server": settled_by["server"],
        "authorize_p50_ms": statistics.median(latencies),
        "authorize_p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)],
        "authorize_max_ms": latencies[-1],
        "authorize_failovers": sum(1 for o in connected if o.failovers),
        "settles_retried": sum(1 for o in connected if o.settle_attempt and o.settled_by_hangup),
        "killed_server_back_s": marks["killed_back"] - marks["kill"],
        "drain_s": marks["drain_s"],
        "terminated_server_back_s": marks["term_back"] - marks["term"],
    }


def _gap_ms(outcomes: list[Outcome], duration: float) -> float:
    """The longest stretch of consecutive calls that got no decision (or "try again
    later"), from the first one's due time to the due time of the next call decided."""
    longest = 0.0
    start: float | None = None
    for outcome in outcomes:
        failed = not outcome.decision or outcome.reason == "try again later"
        if failed and start is None:
            start = outcome.due
        elif not failed and start is not None:
            longest = max(longest, outcome.due - start)
            start = None
    if start is not None:
        longest = max(longest, duration - start)
    return longest * 1000


if __name__ == "__main__":
    main()
