"""The high-availability service of a running server: keepalived beside the daemon, and what its
state changes mean for the clients.

HaService is a service of the server role (server/role.py); while the interface runs it
- runs keepalived for this gateway's plan (keepalived.py), after putting this gateway's own
  address on the device into its registry row (the other members send their adverts there);
- reads keepalived's notify FIFO in a thread of its own: each line is a state change (MASTER,
  BACKUP, FAULT, STOP); the state is logged, kept in the registry (gateways.ha_state, with a
  revision: every gateway's `tunnel server show` sees it), shown by `tunnel show` and the metrics;
- on MASTER (the VIP is ours now): a handshake to every peer any gateway saw in the last
  RESUME_WINDOW, at its last endpoint in the registry (peer_endpoints), paced as a restart's
  resumption (tunnel/resume.py `take_over`): a stock client resumes at once instead of waiting
  ~15 s for its own timers to give up on the old gateway's session. A registry that does not
  answer within TAKEOVER_WAIT is not waited for: every peer, at the endpoint this gateway knew;
- a heartbeat every HEARTBEAT seconds (no revision) and, while master, a look at the other
  members: one whose row says master and whose heartbeat still moves on holds the VIP too (a split
  network): logged on both sides, and when it ends the survivor handshakes its peers again (they
  may have moved to the other meanwhile);
- follows the registry (a reconciler listener): priority, preemption and the other members'
  addresses reach keepalived with a reload; a new VIP, VRID or device needs a restart (logged).

Rules kept here:
- the device is touched only in the loop's thread (the Pacer hands batches in); the registry only
  from this service's registry thread, on a connection of its own (the listener renders from
  snapshots), so a slow or unreachable registry never delays what the FIFO says;
- keepalived is (re)started only in the loop's thread, which lives as long as the daemon (its
  death signal follows the thread that forked it);
- nothing here stops the data plane: a registry failure is logged once and tried again; a
  keepalived that exits is started again after RESTART_DELAYS and shown as stopped meanwhile;
- two masters never corrupt the registry: each writes only its own gateway row and endpoint
  records (the last writer's endpoint is as good as any), and reconciling only reads.
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
import time
from typing import Callable

from server.registry import Registry, RegistryError
from tunnel.endpointstore import parse_endpoint_text
from tunnel.protocol.crypto import KeyError_, decode_key
from tunnel.resume import RESUME_WINDOW, Pacer, take_over

from .keepalived import Files, Keepalived, instance_name, make_fifo
from .settings import ROLE, STATES, HaError, Plan, plan_for

log = logging.getLogger("tunnel")

HEARTBEAT = 2.0  # seconds between heartbeats (and looks for a second master)
TAKEOVER_WAIT = 1.0  # seconds a new master waits for the registry's endpoints before using its own
REGISTRY_RETRY = 5.0  # seconds between attempts to reach a registry that failed
RESTART_DELAYS = (2.0, 5.0, 10.0, 30.0)  # before starting an exited keepalived again
_LINE = re.compile(r'INSTANCE "([^"]+)" (MASTER|BACKUP|FAULT|STOP)\b')


class _NotYet(RegistryError):
    """The registry failed a moment ago: not tried again before REGISTRY_RETRY."""


def parse_notify(line: str, instance: str) -> str | None:
    """keepalived's FIFO line for INSTANCE as one of STATES, or None (another instance, a group, noise)."""
    m = _LINE.match(line.strip())
    if m is None or m.group(1) != instance:
        return None
    return {"MASTER": "master", "BACKUP": "backup", "FAULT": "fault", "STOP": "stopped"}[m.group(2)]


class SecondMaster:
    """Split-brain detection from the registry's rows, without trusting other machines' clocks.

    While we are master, another member whose row says master and whose heartbeat value moved
    within the last STALE seconds (of our clock) is alive and holds the VIP too. A master that died
    keeps its row ("master") but its heartbeat stands still: it never counts.
    """

    def __init__(self, stale: float = 3 * HEARTBEAT):
        self.stale = stale
        self.seen: dict[str, tuple[float | None, float | None]] = {}  # name -> (heartbeat, when it moved)
        self.claimants: set[str] = set()

    def reset(self) -> None:
        self.seen.clear()
        self.claimants = set()

    def look(self, gateways, me: str, master: bool, now: float) -> tuple[set[str], set[str]]:
        """(claimants that appeared, claimants that went) since the last look, at NOW (our clock)."""
        if not master:
            went = self.claimants
            self.reset()
            return set(), went
        current: set[str] = set()
        for g in gateways:
            if g.name == me:
                continue
            if g.ha_state != "master":
                self.seen.pop(g.name, None)
                continue
            before = self.seen.get(g.name)
            if before is None:
                self.seen[g.name] = (g.last_heartbeat, None)  # a first sighting proves nothing yet
            elif g.last_heartbeat != before[0]:
                self.seen[g.name] = (g.last_heartbeat, now)
            moved = self.seen[g.name][1]
            if moved is not None and now - moved <= self.stale:
                current.add(g.name)
        appeared, went = current - self.claimants, self.claimants - current
        self.claimants = current
        return appeared, went


class HaService:
    """Construct with the plan (daemon.py), then `start(interface)` as a service; `close()` stops it."""

    def __init__(self, opener: Callable[[], Registry], reconciler, plan: Plan, *, address: str,
                 server_dir: str, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, heartbeat: float = HEARTBEAT):
        self._open = opener
        self.plan = plan
        self.address = address
        self.server_dir = server_dir
        self.clock = clock
        self.wall_clock = wall_clock
        self.heartbeat = heartbeat
        self.state = "starting"
        self.since = wall_clock()
        self.transitions = 0
        self.takeover_handshakes = 0
        self.split = SecondMaster()
        self._since_master = 0.0  # the loop's clock when we last became master
        self._takeover: tuple[str, float] | None = None  # a takeover asked of the registry thread, and when
        self._wake = threading.Event()  # the registry thread: something to write or read now
        self._retry_at = 0.0
        self._states: dict[str, str | None] = {}  # the other gateways' HA states, as the last snapshot said
        self._look_now = False
        self._registry: Registry | None = None
        self._registry_failed = False
        self._pending_state: str | None = None  # to write to the registry
        self._need_address = True
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._registry_thread: threading.Thread | None = None
        self._interface = None
        self._keepalived: Keepalived | None = None
        self._pacer: Pacer | None = None
        self._fifo: int | None = None
        self._restarts = 0
        self._restart_at: float | None = None
        self._last_start = 0.0
        self._warned: set[str] = set()
        reconciler.add_listener(self._on_snapshot)

    # -- as a service ------------------------------------------------------------------

    def start(self, interface) -> "HaService":
        self._interface = interface
        self.ifname = interface.name
        files = Files.of(self.server_dir, interface.name)
        os.makedirs(files.directory, mode=0o700, exist_ok=True)
        os.chmod(files.directory, 0o700)
        self._fifo = make_fifo(files.fifo)
        plane = interface.plane
        self._pacer = Pacer(plane.call_soon_threadsafe, self._take_over_batch, clock=self.clock).start()
        self._keepalived = Keepalived(files, self.plan, ifname=interface.name, address=self.address)
        try:
            self._keepalived.start(interface.journal)
        except (OSError, HaError) as exc:
            self._close_fifo()
            self._pacer.close()
            raise OSError(f"cannot start keepalived: {exc}") from None
        interface.status_providers["ha"] = self.status
        interface.metric_families.append(self.metric_families)
        self._thread = threading.Thread(target=self._run, name="ha", daemon=True)
        self._registry_thread = threading.Thread(target=self._run_registry, name="ha-registry", daemon=True)
        self._thread.start()
        self._registry_thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._keepalived is not None:
            with self._lock:
                self._keepalived.stop()  # the VIP goes now: the other member takes it at once
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._registry_thread is not None:
            self._registry_thread.join(15)
        if self._pacer is not None:
            self._pacer.close()
        self._close_fifo()
        self._drop_registry()

    def _close_fifo(self) -> None:
        if self._fifo is not None:
            os.close(self._fifo)
            self._fifo = None

    # -- keepalived's word: the FIFO thread --------------------------------------------

    def _run(self) -> None:
        """Reads the FIFO and acts on it at once; never waits on the registry (its thread does)."""
        buffer = b""
        instance = instance_name(self.ifname)
        while True:
            stopping = self._stop.is_set()
            ready = select.select([self._fifo], [], [], 0 if stopping else 0.25)[0]
            if ready:
                try:
                    buffer += os.read(self._fifo, 4096)
                except BlockingIOError:
                    pass
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    state = parse_notify(line.decode("utf-8", "replace"), instance)
                    if state is not None:
                        self._became(state)
            elif stopping:
                break
            if not stopping:
                self._watch_keepalived()
                self._fall_back_if_late()

    def _became(self, state: str) -> None:
        with self._lock:
            if state == self.state:
                return
            old, self.state = self.state, state
            self.since = self.wall_clock()
            self.transitions += 1
            self._pending_state = state
            if state == "master":
                self.split.reset()
                self._request_takeover("MASTER of")
            else:
                self._takeover = None
        self._wake.set()
        vip = self.plan.shared.vip
        if state == "backup":
            log.info("%s: BACKUP for %s%s", self.ifname, vip,
                     ": another gateway took it over" if old == "master" else "")
        elif state == "fault":
            log.warning("%s: FAULT: %s cannot hold %s (down, or without its address)", self.ifname,
                        self.plan.member.dev, vip)
        elif state == "stopped":
            log.info("%s: keepalived stopped: %s released", self.ifname, vip)

    # -- taking the peers over -----------------------------------------------------------

    def _request_takeover(self, why: str) -> None:
        """(Lock held.) Ask the registry thread for the recent peers' endpoints; `_fall_back_if_late`
        uses what this gateway knows if the answer does not come within TAKEOVER_WAIT."""
        self._since_master = self.clock()
        self._takeover = (why, self.clock())

    def _fall_back_if_late(self) -> None:
        with self._lock:
            request = self._takeover
            if request is None or self.clock() - request[1] < TAKEOVER_WAIT:
                return
            self._takeover = None
        self._queue(request[0], self._local_targets(), "at the endpoints this gateway knew: the registry did "
                    f"not answer within {TAKEOVER_WAIT:.0f} s")

    def _local_targets(self) -> list:
        # Every peer, at its endpoint as this gateway last saw it (take_over skips those it has none for).
        return [(key, None) for key in list(self._interface.device.peers)]

    def _serve_takeover(self) -> None:
        """(The registry thread.) The recent peers at their last endpoints in the registry, for the pacer."""
        with self._lock:
            request = self._takeover
        if request is None:
            return
        try:
            rows = self._reg().peer_endpoints(seen_since=self.wall_clock() - RESUME_WINDOW)
        except RegistryError:
            with self._lock:
                mine = self._takeover is request
                if mine:
                    self._takeover = None
            if mine:  # no registry to ask: what this gateway knows, now
                self._queue(request[0], self._local_targets(), "at the endpoints this gateway knew: the "
                            "registry is unreachable")
            raise
        targets = []
        for row in sorted(rows.values(), key=lambda r: r.last_seen, reverse=True):
            try:
                targets.append((decode_key(row.public_key), parse_endpoint_text(row.endpoint)))
            except (KeyError_, ValueError):
                continue
        with self._lock:
            if self._takeover is not request:
                return  # the fall-back went first (it was late), or we are no longer master
            self._takeover = None
        self._queue(request[0], targets, f"seen in the last {RESUME_WINDOW:.0f} s, at their last endpoints in "
                    "the registry")

    def _queue(self, why: str, targets: list, where: str) -> None:
        self._pacer.add(targets)
        log.info("%s: %s %s: handshaking with %d peer(s) %s", self.ifname, why, self.plan.shared.vip,
                 len(targets), where)

    def _take_over_batch(self, batch: list) -> None:
        """In the loop's thread."""
        plane = self._interface.plane
        started = take_over(self._interface.device, plane.perform, batch, self._since_master, plane.clock())
        self.takeover_handshakes += started

    # -- the registry thread ---------------------------------------------------------------

    def _run_registry(self) -> None:
        next_beat = 0.0
        while not self._stop.is_set():
            due = time.monotonic() >= next_beat or self._look_now
            self._look_now = False
            if due:
                next_beat = time.monotonic() + self.heartbeat
            self._registry_work(due)
            self._wake.wait(max(0.0, next_beat - time.monotonic()))
            self._wake.clear()
        # What keepalived said last (STOP, on a clean stop) goes to the registry before we leave.
        self._thread.join(5)
        with self._lock:
            if self._pending_state is None and self.state != "stopped":
                self._pending_state = "stopped"
        self._registry_work(False)

    def _reg(self) -> Registry:
        if self._registry is None:
            if self._registry_failed and time.monotonic() < self._retry_at:
                raise _NotYet("the registry failed a moment ago")
            self._registry = self._open()
        return self._registry

    def _registry_down(self, exc: Exception) -> None:
        if not self._registry_failed:
            log.warning("%s: HA: %s; the state is kept here and written when it is back", self.ifname, exc)
        self._registry_failed = True
        self._retry_at = time.monotonic() + REGISTRY_RETRY
        self._drop_registry()

    def _drop_registry(self) -> None:
        """Close the registry connection, if any, quietly (it is opened again when needed)."""
        if self._registry is not None:
            try:
                self._registry.close()
            except RegistryError:
                pass
            self._registry = None

    def _registry_work(self, beat: bool) -> None:
        """One round of the registry thread: a takeover's endpoints first (time counts), our address,
        the state to record, and when BEAT the heartbeat and the look for a second master."""
        try:
            self._serve_takeover()
            if self._need_address:
                self._write_address(self._reg())
                self._need_address = False
            with self._lock:
                pending = self._pending_state
            if pending is not None:
                self._reg().set_gateway(self.plan.gateway, ha_state=pending)
                with self._lock:
                    if self._pending_state == pending:
                        self._pending_state = None
            if beat:
                reg = self._reg()
                reg.heartbeat(self.plan.gateway)
                self._look_for_second_master(reg.gateways())
            if self._registry_failed:
                log.info("%s: HA: the registry is reachable again", self.ifname)
                self._registry_failed = False
        except _NotYet:
            pass
        except RegistryError as exc:
            self._registry_down(exc)

    def _write_address(self, reg: Registry) -> None:
        me = next((g for g in reg.gateways() if g.name == self.plan.gateway), None)
        if me is None:
            return
        options = dict(me.options or {})
        ha = dict(options.get("ha") or {})
        if ha.get("address") != self.address:
            ha["address"] = self.address
            options["ha"] = ha
            reg.set_gateway(self.plan.gateway, options=options)

    def _look_for_second_master(self, gateways) -> None:
        members = [g for g in gateways if g.ha_role == ROLE]
        with self._lock:
            master = self.state == "master"
            appeared, went = self.split.look(members, self.plan.gateway, master, self.clock())
            retake = bool(went) and not self.split.claimants and master
            if retake:
                self._request_takeover("still MASTER of")  # our peers may have moved to the other meanwhile
        vip = self.plan.shared.vip
        for name in sorted(appeared):
            log.warning("%s: split brain: gateway %s holds %s too (its row says master and its heartbeat "
                        "goes on): the network between the members is cut; clients reach whichever one "
                        "the segment's ARP points at", self.ifname, name, vip)
        for name in sorted(went):
            if master:
                log.warning("%s: split brain over: gateway %s no longer claims %s", self.ifname, name, vip)
            else:
                log.warning("%s: split brain over: this gateway is %s again, %s holds %s", self.ifname,
                            self.state.upper(), name, vip)
        if retake:
            self._serve_takeover()

    # -- keepalived ----------------------------------------------------------------------

    def _watch_keepalived(self) -> None:
        k = self._keepalived
        if k is None or self._closing.is_set():
            return
        with self._lock:
            status = k.poll()
        now = time.monotonic()
        if status is None:
            if self._restart_at is None and self._restarts and now - self._last_start > 60:
                self._restarts = 0  # it ran a minute: a later exit starts the delays again
            return
        if self._restart_at is None:
            delay = RESTART_DELAYS[min(self._restarts, len(RESTART_DELAYS) - 1)]
            log.error("%s: keepalived exited with status %s: starting it again in %.0f s", self.ifname, status,
                      delay)
            self._restart_at = now + delay
            if self.state != "stopped":
                self._became("stopped")
        elif now >= self._restart_at:
            self._restart_at = None
            self._restarts += 1
            self._last_start = now
            self._interface.plane.call_soon_threadsafe(self._restart_in_loop)

    def _restart_in_loop(self) -> None:
        with self._lock:
            if self._stop.is_set() or self._keepalived is None:
                return
            try:
                self._keepalived.restart()
            except (OSError, HaError) as exc:
                log.error("%s: keepalived cannot be started again: %s", self.ifname, exc)

    # -- following the registry ------------------------------------------------------------

    def _on_snapshot(self, snap, now: float) -> None:
        """The reconciler's listener: what a running keepalived can take, it gets; another member's new
        state is looked at now (a second master that stepped back ends a split brain at once)."""
        if self._keepalived is None or self._closing.is_set():
            return
        states = {g.name: g.ha_state for g in snap.gateways if g.name != self.plan.gateway}
        if states != self._states:
            self._states = states
            self._look_now = True
            self._wake.set()
        try:
            plan = plan_for(snap.settings.extra, snap.gateways, self.plan.gateway)
        except HaError as exc:
            self._warn_once(f"{exc}; keepalived goes on as it was")
            return
        running = self.plan
        if plan is None:
            self._warn_once("HA is off for this gateway in the registry: restart the server to stop keepalived "
                            f"(it holds {running.shared.vip} or waits for it meanwhile)")
            return
        if (plan.shared, plan.member.dev) != (running.shared, running.member.dev):
            self._warn_once(f"the registry says {plan.shared.vip} (VRID {plan.shared.vrid}) on {plan.member.dev}: "
                            f"restart the server to apply it (it serves {running.shared.vip} on "
                            f"{running.member.dev} until then)")
            return
        self._warned.clear()
        with self._lock:
            if self._keepalived.reload(plan):
                self.plan = plan
                log.info("%s: keepalived reloaded: priority %d%s, peers %s", self.ifname, plan.member.priority,
                         "" if plan.member.preempt else ", no preemption", ", ".join(plan.peers) or "none yet")

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s: HA: %s", self.ifname, message)

    # -- status and metrics ----------------------------------------------------------------

    def status(self) -> dict:
        p, k = self.plan, self._keepalived
        running = k is not None and k.poll() is None
        out = {
            "vip": str(p.shared.vip), "vrid": p.shared.vrid, "dev": p.member.dev, "priority": p.member.priority,
            "preempt": p.member.preempt, "address": self.address, "peers": list(p.peers), "state": self.state,
            "since": self.since, "transitions": self.transitions, "takeover_handshakes": self.takeover_handshakes,
            "split_brain": sorted(self.split.claimants),
            "keepalived": {"pid": k.pid if k is not None else None, "running": running},
        }
        age = max(0, int(self.wall_clock() - self.since))
        line = (f"high availability: {self.state.upper()} for {p.shared.vip} on {p.member.dev} "
                f"(VRID {p.shared.vrid}, priority {p.member.priority}"
                f"{'' if p.member.preempt else ', no preemption'}) for {age} s")
        lines = [line]
        if self.split.claimants:
            lines.append("split brain: " + ", ".join(sorted(self.split.claimants)) + " holds the VIP too")
        if not running:
            lines.append("keepalived is not running")
        out["lines"] = lines
        return out

    def metric_families(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = [self.ifname, str(self.plan.shared.vip)]
        state = GaugeMetricFamily("tunnel_ha_state", "This gateway's VRRP state for the VIP (1: the current one)",
                                  labels=["interface", "vip", "state"])
        for s in STATES:
            state.add_metric(labels + [s], 1 if self.state == s else 0)
        yield state
        transitions = CounterMetricFamily("tunnel_ha_transitions_total", "VRRP state changes",
                                          labels=["interface", "vip"])
        transitions.add_metric(labels, self.transitions)
        yield transitions
        takeover = CounterMetricFamily("tunnel_ha_takeover_handshakes_total",
                                       "Handshakes started on becoming master", labels=["interface", "vip"])
        takeover.add_metric(labels, self.takeover_handshakes)
        yield takeover
        split = GaugeMetricFamily("tunnel_ha_split_brain", "Other members holding the VIP too",
                                  labels=["interface", "vip"])
        split.add_metric(labels, len(self.split.claimants))
        yield split
