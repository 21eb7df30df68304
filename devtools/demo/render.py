"""How the demo looks: a live rich table on a terminal, plain progress lines otherwise, and the summary.

Owns presentation only: everything shown comes from ``ScenarioState`` and the supervisor's
``ChildStatus`` snapshots. Must not poll or act.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from devtools.demo.fleet import Endpoints
from devtools.demo.model import OrderProgress, ScenarioState
from devtools.supervisor import ChildStatus

Echo = Callable[[str], None]
DASH = "—"
STATE_STYLE = {
    "healthy": "green",
    "running": "green",
    "starting": "yellow",
    "backoff": "red",
    "crash-loop": "bold red",
    "unhealthy": "red",
    "not available": "dim",
    "stopped": "dim",
}
OUTCOME_STYLE = {"fulfilled": "green", "failed": "bold red", "timed out": "bold red", "waiting": "yellow"}


# --- live (terminal) -----------------------------------------------------------------------------
@contextmanager
def live_view(console: Console) -> Iterator[Callable[[ScenarioState], None]]:
    """``with live_view(console) as show: show(state)`` redraws the table in place."""
    with Live(console=console, refresh_per_second=8, transient=False) as live:
        yield lambda state: live.update(screen(state))


def screen(state: ScenarioState) -> Group:
    parts: list[Any] = [orders_table(state)]
    if state.workers:
        parts.append(workers_table(state.workers))
    parts.append(_keys_line(state))
    parts += [Text(f"{at:6.1f}s  {text}", style="dim") for at, text in state.notes[-6:]]
    return Group(*parts)


def orders_table(state: ScenarioState) -> Table:
    now = time.monotonic()
    table = Table(title="demo orders", title_justify="left", expand=False)
    for column in ("order", "customer", "SF order", "Status", "Activation", "error", "saga", "WHMCS", "elapsed"):
        table.add_column(column, no_wrap=True)
    for o in state.orders:
        elapsed = o.elapsed(now)
        table.add_row(
            Text(o.label, style=OUTCOME_STYLE.get(o.outcome, "")),
            o.customer,
            o.number or DASH,
            o.status or DASH,
            o.activation or DASH,
            Text(o.error_code or DASH, style="red" if o.error_code else ""),
            _saga(o),
            o.whmcs_order_id or DASH,
            f"{elapsed:5.1f} s" if elapsed is not None else DASH,
        )
    return table


def workers_table(workers: list[ChildStatus]) -> Table:
    table = Table(title="fleet", title_justify="left")
    for column in ("process", "state", "pid", "restarts", "last problem"):
        table.add_column(column, no_wrap=column != "last problem", overflow="ellipsis", max_width=70)
    for w in workers:
        table.add_row(
            w.name,
            Text(w.label, style=STATE_STYLE.get(w.label, "")),
            str(w.pid or DASH),
            str(w.restarts),
            w.reason or "",
        )
    return table


def _saga(o: OrderProgress) -> str:
    if o.saga_state is None:
        return DASH
    return o.saga_state if o.saga_state == "fulfilled" or not o.saga_step else f"{o.saga_state} · {o.saga_step}"


def _keys_line(state: ScenarioState) -> Text:
    dropped = [k for k in state.keys if k.dropped_at is not None]
    line = f"portal cache keys: {len(state.keys)} seeded, {len(dropped)} dropped"
    if dropped:
        last = max(dropped, key=lambda k: k.dropped_at or 0.0)
        line += f" (latest: {last.key} — {last.why})"
    return Text(line)


# --- plain (not a terminal) ----------------------------------------------------------------------
class PlainProgress:
    """One line per scenario note and per order whose visible state changed."""

    def __init__(self, echo: Echo) -> None:
        self._echo = echo
        self._notes = 0
        self._rows: dict[str, tuple[Any, ...]] = {}
        self._workers: dict[str, str] = {}

    def __call__(self, state: ScenarioState) -> None:
        for at, text in state.notes[self._notes :]:
            self._echo(f"[{at:6.1f}s] {text}")
        self._notes = len(state.notes)
        for o in state.orders:
            row = (o.status, o.activation, o.error_code, o.saga_state, o.saga_step, o.whmcs_order_id)
            if o.sf_id and self._rows.get(o.sf_id) != row:
                self._rows[o.sf_id] = row
                self._echo(f"  {o.number} {o.label:<24} {_plain_row(o)}")
        for w in state.workers:
            if self._workers.get(w.name) != w.label:
                self._workers[w.name] = w.label
                self._echo(f"  process {w.name}: {w.label}" + (f" ({w.reason})" if w.reason else ""))


def _plain_row(o: OrderProgress) -> str:
    return (
        f"Status={o.status or DASH} Activation={o.activation or DASH} error={o.error_code or DASH} "
        f"saga={_saga(o)} WHMCS={o.whmcs_order_id or DASH}"
    )


# --- the summary ---------------------------------------------------------------------------------
def summary_lines(state: ScenarioState) -> list[str]:
    now = time.monotonic()
    lines = ["", "SUMMARY"]
    for o in state.orders:
        took = o.elapsed(now)
        lines.append(
            f"  order {o.number or DASH:<9} {o.label:<24} {o.customer:<8} {o.path:<30} "
            f"WHMCS {o.whmcs_order_id or DASH:<6} {f'{took:.1f} s' if took is not None else DASH}"
        )
    calls = state.api_calls
    per = f" ({calls / len(state.orders):.1f} per order)" if calls is not None and state.orders else ""
    lines.append(f"  salesforce api calls: {calls if calls is not None else DASH}{per}")
    lines += _key_lines(state)
    letters = state.dead_letters
    shown = ", ".join(f"{t}: {n}" for t, n in letters.items()) if letters else "none"
    lines.append(f"  dead letters: {shown if letters is not None else DASH}")
    lines += [f"  process {w.name}: {w.label} ({w.reason})" for w in state.workers if w.label in _TROUBLE]
    done = sum(o.outcome == "fulfilled" for o in state.orders)
    verdict = "PASS" if state.ok else ("INTERRUPTED" if state.interrupted else "FAIL")
    lines.append(f"result: {verdict} ({done}/{len(state.orders)} orders fulfilled)")
    return lines


_TROUBLE = frozenset({"crash-loop", "not available", "backoff", "unhealthy"})


def _key_lines(state: ScenarioState) -> list[str]:
    dropped = [k for k in state.keys if k.dropped_at is not None]
    lines = [f"  portal cache keys dropped: {len(dropped)} of {len(state.keys)}"]
    for k in dropped:
        assert k.dropped_at is not None
        lines.append(f"    {k.key}  ({k.why}; gone {k.dropped_at - k.seeded_at:.1f} s after seeding)")
    return lines


def summary_dict(state: ScenarioState) -> dict[str, Any]:
    """The summary as data (written to ``.fleet/demo/summary.json`` for scripts and the e2e test)."""
    now = time.monotonic()
    return {
        "ok": state.ok,
        "interrupted": state.interrupted,
        "orders": [
            {
                "label": o.label,
                "customer": o.customer,
                "sf_order_id": o.sf_id,
                "order_number": o.number,
                "outcome": o.outcome,
                "path": o.path,
                "parked": o.parked_at is not None,
                "status": o.status,
                "activation_status": o.activation,
                "error_code": o.error_code,
                "whmcs_order_id": o.whmcs_order_id,
                "saga_state": o.saga_state,
                "seconds": _round(o.elapsed(now)),
            }
            for o in state.orders
        ],
        "salesforce_api_calls": state.api_calls,
        "cache_keys": [
            {
                "key": k.key,
                "why": k.why,
                "dropped": k.dropped_at is not None,
                "seconds": _round(k.dropped_at - k.seeded_at if k.dropped_at is not None else None),
            }
            for k in state.keys
        ],
        "dead_letters": state.dead_letters,
        "processes": [
            {"name": w.name, "state": w.label, "restarts": w.restarts, "reason": w.reason} for w in state.workers
        ],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def hints(endpoints: Endpoints, log_dir: str, console_url: str | None = None) -> list[str]:
    return [
        "",
        "The fleet keeps running. Poke it:",
        *([f"  ops console         {console_url}"] if console_url else []),
        f"  Salesforce sandbox  {endpoints.salesforce}/_sandbox/state",
        f"  WHMCS sandbox       {endpoints.whmcs}/_sandbox/state",
        f"  Freebit sandbox     {endpoints.freebit}/_sandbox/state",
        "  .venv/bin/fleet orders list        .venv/bin/fleet orders show <sf order id>",
        "  .venv/bin/fleet dlq list           .venv/bin/fleet demo scenario   (run the scenario again)",
        f"  logs: {log_dir}/<worker>.log",
        "Ctrl-C stops the workers and the sandboxes started here; the stack stays up (`fleet stack down`).",
    ]
