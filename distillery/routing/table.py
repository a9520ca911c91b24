"""A gateway's routes in memory: read from the database every ``refresh_s`` off the event loop, never per call.

With each read the autopilot's evidence gathered since the last one is added to the database (one atomic update per
route and stage, so several gateways pool their evidence) and every route whose autopilot is on is judged
(``AutopilotPolicy.judge``); a decision is stored only if its route has not changed meanwhile. A step back decided
here (the gateway's rollback window) applies at once in this process and reaches every other gateway at their next
refresh, within ``refresh_s``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

from distillery.routing.autopilot import AutopilotPolicy, step_back
from distillery.routing.routes import Route, RouteStore


class RouteTable:
    def __init__(self, store: RouteStore | None, refresh_s: float, autopilot: AutopilotPolicy):
        self.store = store
        self.refresh_s = refresh_s
        self.autopilot = autopilot
        self.routes: dict[str, Route] = store.all() if store else {}
        self.breaches: dict[str, str | None] = {}  # per workload: what its rollback window crossed when last judged
        self._pinned: dict[str, Route] = {}  # changed here, not yet stored: a refresh must not undo them
        self._compared: dict[tuple[str, int], list[int]] = {}  # (workload, epoch): [compared calls, agreeing]
        self._unsent: dict[tuple[str, int], list[int]] = {}  # counts a refresh could not store (the database is away)
        self._due = time.monotonic() + refresh_s
        self._refreshing = False

    def get(self, workload: str) -> Route | None:
        if self.store and not self._refreshing and time.monotonic() >= self._due:
            self._refreshing = True
            compared, self._compared = self._compared, {}  # taken on the event loop, which alone adds to it
            asyncio.get_running_loop().run_in_executor(None, self._refresh, compared, dict(self.breaches))
        return self.routes.get(workload)

    def compared(self, route: Route, agreed: bool) -> None:
        """A compared call of a route whose autopilot is on (a shadow copy, an audit): evidence for its stage."""
        counts = self._compared.setdefault((route.workload, route.epoch), [0, 0])
        counts[0] += 1
        counts[1] += agreed

    def step_back(self, workload: str, reason: str) -> Route | None:
        """Step the workload's current route back one stage (``routing.step_back``), at once in this process; stored
        (and so seen by every gateway) off the event loop. Returns the new route (None: no route to step back)."""
        current = self.routes.get(workload)
        if current is None:
            return None
        route = step_back(current, self.autopilot)
        self._pinned[workload] = route
        self.routes = {**self.routes, workload: route}
        if self.store:
            asyncio.get_running_loop().run_in_executor(None, self._store_rollback, route, reason)
        return route

    def _refresh(self, compared: dict[tuple[str, int], list[int]], breaches: dict[str, str | None]) -> None:
        for key, (calls, agreed) in compared.items():
            counts = self._unsent.setdefault(key, [0, 0])
            counts[0] += calls
            counts[1] += agreed
        try:
            self._run_autopilot(breaches)
            self.routes = {**self.store.all(), **self._pinned}
        except Exception:  # noqa: BLE001 - a database outage keeps the last known routes, and the evidence to store
            pass
        finally:
            self._due = time.monotonic() + self.refresh_s
            self._refreshing = False

    def _run_autopilot(self, breaches: dict[str, str | None]) -> None:
        """Store the evidence gathered since the last refresh, then judge every route whose autopilot is on; a
        decision is stored only if its route has not changed meanwhile (another gateway, a person)."""
        if not self._unsent and not any(route.autopilot for route in self.routes.values()):
            return
        states = self.store.states()
        for (workload, epoch), (calls, agreed) in list(self._unsent.items()):
            state = states.get(workload)
            # Counts of a stage that is over belong to no test any more; nor do those of an approval the autopilot
            # cannot test (`route auto on` says why). Either way they are dropped; the others once stored.
            if state is not None and state.route.epoch == epoch and state.route.approval is not None:
                try:
                    llr = self.autopilot.llr_of(state.route.approval, calls, agreed)
                except ValueError:
                    llr = None
                if llr is not None and self.store.add_evidence(workload, epoch, calls, agreed, llr,
                                                               self.autopilot.step_back_bound):
                    states[workload] = self.store.state(workload) or state
            del self._unsent[workload, epoch]
        now = dt.datetime.now(dt.timezone.utc)
        for workload, state in states.items():
            try:
                decision = self.autopilot.judge(state.route, state.evidence, state.since, now, breaches.get(workload))
            except ValueError:
                continue
            if decision is not None:
                self.store.set(decision.route, decision.reason, decision.kind, evidence=decision.evidence,
                               expected_epoch=state.route.epoch)

    def _store_rollback(self, route: Route, reason: str) -> None:
        try:
            self.store.set(route, f"automatic: {reason}", kind="rollback")
        finally:  # stored, or the database is away: either way the database decides from the next refresh on
            self._pinned.pop(route.workload, None)
