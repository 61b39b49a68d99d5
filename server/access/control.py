"""AccessControl: the access policy, bandwidth limits and user sessions of a running server.

A service of the server role (server/role.py). It listens to the reconciler: on every registry
snapshot it works out, for each active client, whether it is admitted (no login required, or a
live session) and with which groups (the client's, or the session user's), then

    policy    compiles the registry's policy for those clients and applies it to the kernel in
              one switch (server/policy), only when something it depends on changed; a server
              with no policy file and no login behaves as before (no table); with login and no
              policy, an admitted client may go anywhere and the others only to the login page;
    shaping   sets each client's bandwidth from the policy (server/shaping);
    login     runs the login service and endpoint on the server's tunnel address while the
              registry says login is on (server/auth), and mirrors its sessions into the
              registry, where every gateway reads them.

Rules kept here:
- the kernel and the registry are only touched from the reconciler's thread, the ticker and the
  login threads, never from the data plane's loop; one lock orders them;
- a session ends in the kernel at once (its client's map element goes to login-only) before the
  registry and the other gateways hear of it; a login is admitted here at once, before the
  registry's round trip;
- a session is live while the registry holds it and its lifetime lasts; ended ones are
  remembered here so that a snapshot older than the ending cannot bring them back;
- anything that fails (a policy that does not compile, nft, tc, an unreachable registry or
  RADIUS) is logged in one line and the previous state stays in force: fail closed, never open.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
import time
from typing import Callable

from server.auth.backend import ClientInfo
from server.auth.local import LocalBackend
from server.auth.lockout import Lockout
from server.auth.radius import RadiusBackend
from server.auth.service import LoginService
from server.auth.sessions import Grant, Revoke, SessionManager, SessionPolicy
from server.auth.web import LoginEndpoint
from server.gateway import set_client_to_client
from server.policy import (
    LOGIN_ONLY,
    ClientRef,
    DenyLog,
    GatewayContext,
    PolicyError,
    apply_policy,
    client_settings,
    default_log_group,
    deny_counters,
    load_policy,
    remove,
    set_client_target,
)
from server.registry import NotFound, Registry, RegistryError, Snapshot
from server.shaping import ClientLimit, Shaper, ShapingError
from tunnel import nft
from tunnel.protocol.crypto import encode_key

from .sessionfile import SessionFile
from .settings import AuthSettings, AuthSettingsError, from_settings
from .stores import RegistryAccountStore, RegistryFailureStore

log = logging.getLogger("tunnel")

# With login on and no policy file: an admitted client may go anywhere (as without login).
ALLOW_ALL = '{"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}'
TICK = 1.0  # seconds between session checks (idle, lifetime, interim accounting)
TOUCH_EVERY = 30.0  # seconds between writes of sessions' activity and bytes to the registry


class AccessControl:
    """Construct with the reconciler (it listens at once), then start(interface) as a service."""

    def __init__(self, opener: Callable[[], Registry], reconciler, *, gateway: str, state_dir: str,
                 clock: Callable[[], float] = time.time):
        self._open = opener
        self.reconciler = reconciler
        self.gateway = gateway
        self.state_dir = state_dir
        self.clock = clock
        self._lock = threading.RLock()
        self._registry: Registry | None = None
        self._interface = None
        self._snapshot: Snapshot | None = None
        self._applied_key = None
        self._policy_active = False
        self._compiled = None
        self._clients: list[ClientRef] = []
        self._denylog: DenyLog | None = None
        self._shaper: Shaper | None = None
        self._auth: AuthSettings | None = None
        self._auth_error = None
        self.login: LoginService | None = None
        self._endpoint: LoginEndpoint | None = None
        self._sessions_file: SessionFile | None = None
        self._ended: set[str] = set()  # session ids ended here (or seen ended): never live again
        self._recorded: dict[str, int] = {}  # session id this gateway wrote -> the registry's revision then
        self._actions: queue.SimpleQueue = queue.SimpleQueue()  # from the login service, for the ticker
        self._wake = threading.Event()
        self._names: dict[str, str] = {}  # public key (base64) -> client name
        self._by_address: dict[str, ClientInfo] = {}
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        reconciler.add_listener(self._on_snapshot)

    # -- as a service ------------------------------------------------------------------

    def start(self, interface) -> "AccessControl":
        with self._lock:
            self._interface = interface
            self.ifname = interface.name
            self.addresses = [str(a) for a in interface.config.interface.addresses]
            self._shaper = Shaper(interface.journal, interface.name)
            self._sessions_file = SessionFile(os.path.join(self.state_dir, f"{interface.name}.sessions.json"))
            interface.status_providers["access"] = self.status
            interface.metric_families.append(self.metric_families)
            snap = self._snapshot or self.reconciler.snapshot
            if snap is not None:
                self._apply(snap, self.clock())
        self._ticker = threading.Thread(target=self._tick_loop, name="access", daemon=True)
        self._ticker.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._ticker is not None:
            self._ticker.join(10)
        with self._lock:
            self._stop_login(end_sessions=False)
            if self._denylog is not None:
                self._denylog.close()
                self._denylog = None
            if self._registry is not None:
                self._registry.close()
                self._registry = None
        # The policy table, the qdiscs and the ifb go with the interface's journal.

    # -- snapshots -----------------------------------------------------------------------

    def _on_snapshot(self, snap: Snapshot, now: float) -> None:
        with self._lock:
            self._snapshot = snap
            if self._interface is not None:
                self._apply(snap, now)

    def _apply(self, snap: Snapshot, now: float) -> None:
        self._snapshot = snap
        self._configure_login(snap)
        auth = self._auth
        text = snap.policy.text if snap.policy is not None else (ALLOW_ALL if auth is not None else None)
        if text is None and not self._policy_active and self._applied_key is not None:
            return  # no policy, no login, nothing in force: nothing per client to work out (10,000 clients)
        active = snap.active_clients(now)
        if auth is not None:
            self._names = {c.public_key: c.name for c in snap.clients}
            self._by_address = {a.split("/")[0]: ClientInfo(name=c.name, public_key=c.public_key,
                                                            address=a.split("/")[0])
                                for c in active for a in c.addresses}
        live = self._live_sessions(snap, now, {c.name for c in active}) if auth is not None else {}
        clients = []
        for c in active:
            if auth is None:
                clients.append(ClientRef(c.name, c.addresses, frozenset(c.groups)))
            else:
                groups = live.get(c.name)
                clients.append(ClientRef(c.name, c.addresses, frozenset(groups or ()), admitted=groups is not None))
        # What was applied, kept as a digest: the tuple itself is ~200 bytes a client, for as long as it runs.
        key = hashlib.blake2b(repr((
            text, tuple((r.name, r.addresses, tuple(sorted(r.groups)), r.admitted) for r in clients),
            auth.port if auth else None, tuple(snap.settings.dns), snap.settings.client_to_client,
        )).encode()).digest()
        if key == self._applied_key:
            return
        if self._apply_policy(text, clients, snap, auth):
            self._applied_key = key
            self._clients = clients

    def _live_sessions(self, snap: Snapshot, now: float, active: set[str]) -> dict[str, tuple[str, ...]]:
        """Client name -> the groups of its live session: the registry's, and this gateway's own."""
        live: dict[str, tuple[str, ...]] = {}
        for s in snap.sessions:
            if s.id in self._ended or not s.live(now):
                if not s.active:
                    self._ended.add(s.id)
                continue
            live[s.client] = tuple(s.groups)
        if self.login is not None:
            local = {s.client.name: s for s in self.login.sessions_list()}
            registry_ids = {s.client: s.id for s in snap.sessions if s.active}
            for name, s in local.items():
                rid = registry_ids.get(name)
                if s.session_id in self._ended:
                    continue
                if name not in active:  # the client expired or was removed: its session ends with it
                    self.login.remove_client(name)
                    continue
                if rid is not None and rid != s.session_id and rid not in self._ended:
                    # A newer login on another gateway replaced ours.
                    self.login.kick(s.client.public_key)
                    continue
                if rid is None and snap.revision >= self._recorded.get(s.session_id, float("inf")):
                    # Ended in the registry (a kick from any gateway): end it here too. A snapshot
                    # older than our own write does not know it yet, and proves nothing.
                    self.login.kick(s.client.public_key)
                    continue
                live[name] = tuple(s.groups)
        return live

    def _apply_policy(self, text: str | None, clients: list[ClientRef], snap: Snapshot,
                      auth: AuthSettings | None) -> bool:
        journal = self._interface.journal
        settings = snap.settings
        try:
            if text is None:
                if self._policy_active:
                    # Client isolation back first, then the policy table goes.
                    set_client_to_client(self.ifname, list(settings.pools), masquerade=settings.nat,
                                         allow=settings.client_to_client)
                    remove(self.ifname)
                    self._policy_active = False
                    self._compiled = None
                    log.info("%s: no access policy: every client reaches the site and the internet", self.ifname)
                self._set_limits({})
                return True
            policy = load_policy(text, "policy" if snap.policy is not None else "(login, no policy)")
            services = [f"tcp/{auth.port}"] if auth is not None else []
            gateway = GatewayContext.make(self.addresses, settings.dns, services)
            compiled = apply_policy(journal, policy, clients, ifname=self.ifname, gateway=gateway, strict=False,
                                    log_group=default_log_group(self.ifname))
        except (PolicyError, nft.NftError, ValueError) as exc:
            log.error("%s: access policy not applied, the previous one stays: %s", self.ifname, exc)
            return False
        for warning in compiled.warnings:
            log.warning("%s: policy: %s", self.ifname, warning)
        if not self._policy_active:
            # The policy decides client-to-client now: the gateway's blanket drop goes.
            set_client_to_client(self.ifname, list(settings.pools), masquerade=settings.nat, allow=True)
            self._policy_active = True
            log.info("%s: access policy in force (default deny)", self.ifname)
        version = snap.policy.version if snap.policy is not None else 0
        log.info("%s: access policy %s applied: %d client(s), %d admitted, %d class(es)", self.ifname,
                 f"version {version}" if version else "(login only)", len(clients),
                 sum(1 for c in clients if c.admitted), len(compiled.classes))
        self._compiled = compiled
        self._start_denylog(compiled)
        limits = {}
        for name, cs in client_settings(policy, clients).items():
            if cs.bandwidth is not None and (cs.bandwidth.down or cs.bandwidth.up):
                ref = next(r for r in clients if r.name == name)
                hosts = tuple(a.split("/")[0] for a in ref.addresses if _is_host(a))
                if hosts:
                    limits[name] = ClientLimit(hosts, cs.bandwidth.down, cs.bandwidth.up)
        self._set_limits(limits)
        return True

    def _set_limits(self, limits: dict[str, ClientLimit]) -> None:
        try:
            self._shaper.apply(limits)
        except (ShapingError, ValueError) as exc:
            log.error("%s: bandwidth limits not applied: %s", self.ifname, exc)

    def _start_denylog(self, compiled) -> None:
        if self._denylog is None:
            try:
                self._denylog = DenyLog(self.ifname, compiled.log_group, compiled.names)
            except OSError as exc:
                log.warning("%s: denied connections will be counted but not logged: %s", self.ifname, exc)
                return
        self._denylog.set_names(compiled.names)

    # -- login ---------------------------------------------------------------------------

    def _configure_login(self, snap: Snapshot) -> None:
        try:
            auth = from_settings(snap.settings.extra)
        except AuthSettingsError as exc:
            if str(exc) != self._auth_error:
                log.error("%s: %s: login settings ignored, the previous ones stay", self.ifname, exc)
                self._auth_error = str(exc)
            return
        self._auth_error = None
        if auth == self._auth:
            return
        self._stop_login(end_sessions=auth is None)
        self._auth = auth
        if auth is None:
            log.info("%s: login not required", self.ifname)
            return
        registry = self._reg()
        if auth.backend == "local":
            backend = LocalBackend(RegistryAccountStore(registry))
        else:
            backend = RadiusBackend(auth.radius_config())
        manager = SessionManager(self._sessions_file, SessionPolicy(lifetime=auth.lifetime, idle_timeout=auth.idle))
        self.login = LoginService(backend, sessions=manager, lockout=Lockout(RegistryFailureStore(registry)),
                                  on_actions=self._on_login_actions, counters_of=self._counters_of, clock=self.clock)
        address = next((a.split("/")[0] for a in self.addresses if ":" not in a), self.addresses[0].split("/")[0])
        self._endpoint = LoginEndpoint(self.login, self._resolve_client, address, auth.port)
        try:
            self._endpoint.start()
        except OSError as exc:
            log.error("%s: the login page cannot listen on %s port %d: %s", self.ifname, address, auth.port, exc)
            self._endpoint = None
        # Sessions this gateway held before a restart go on (their Grants re-admit them).
        self.login.resume()
        self._wake.set()  # the ticker now runs on a clock
        log.info("%s: %s", self.ifname, auth.describe())

    def _stop_login(self, end_sessions: bool) -> None:
        if self._endpoint is not None:
            self._endpoint.stop()
            self._endpoint = None
        if self.login is not None:
            self.login.close(end_sessions=end_sessions)
            self.login = None

    def _resolve_client(self, address: str) -> ClientInfo | None:
        return self._by_address.get(address.split("%")[0])

    def _counters_of(self, client: str) -> tuple[int, int] | None:
        return self._counters().get(client)

    def _counters(self) -> dict[str, tuple[int, int]]:
        """Client name -> (bytes from it, bytes to it) on the wire, from the running device."""
        device = self._interface.device if self._interface is not None else None
        if device is None:
            return {}
        for _ in range(5):
            try:
                peers = list(device.peers.values())
                break
            except RuntimeError:  # the loop changed the dict meanwhile
                continue
        else:
            return {}
        out = {}
        for p in peers:
            name = self._names.get(encode_key(p.public_key))
            if name is not None:
                out[name] = (p.rx_bytes, p.tx_bytes)
        return out

    def _on_login_actions(self, actions) -> None:
        """From the login service, its lock held: handed to the ticker, which takes ours (one lock order:
        ours, then the service's)."""
        self._actions.put(list(actions))
        self._wake.set()

    def _process_actions(self) -> None:
        while True:
            try:
                actions = self._actions.get_nowait()
            except queue.Empty:
                return
            self._handle_actions(actions)

    def _handle_actions(self, actions) -> None:
        """Grant and Revoke reach the kernel and the registry."""
        with self._lock:
            changed = False
            for a in actions:
                if isinstance(a, Grant):
                    s = a.session
                    self._ended.discard(s.session_id)
                    try:
                        recorded = self._reg().start_session(
                            s.user, s.client.name, gateway=self.gateway, expires_at=s.expires,
                            idle_timeout=s.idle_timeout, groups=s.groups, session_id=s.session_id, now=s.started)
                        self._recorded[s.session_id] = self._reg().revision()
                        if not recorded.active:  # resumed, but ended meanwhile (kicked while we were down)
                            self._ended.add(s.session_id)
                            if self.login is not None:
                                self.login.kick(s.client.public_key)
                    except RegistryError as exc:
                        log.error("%s: session of %s on %s kept on this gateway only: %s", self.ifname, s.user,
                                  s.client.name, exc)
                    changed = True
                elif isinstance(a, Revoke):
                    s = a.session
                    self._ended.add(s.session_id)
                    self._login_only(s.client.name)
                    try:
                        self._reg().end_session(s.session_id, a.cause)
                    except NotFound:
                        pass
                    except RegistryError as exc:
                        log.error("%s: the end of %s's session is not in the registry yet: %s", self.ifname,
                                  s.user, exc)
                    changed = True
            if changed and self._snapshot is not None and self._interface is not None:
                self._applied_key = None
                self._apply(self._snapshot, self.clock())

    def _login_only(self, client: str) -> None:
        """The client's addresses to login-only now: its connections stop at their next packet."""
        if not self._policy_active or self._snapshot is None:
            return
        c = self._snapshot.client(client)
        if c is None:
            return
        for address in c.addresses:
            try:
                set_client_target(self.ifname, address, LOGIN_ONLY)
            except (nft.NftError, ValueError) as exc:
                log.error("%s: could not move %s to login-only: %s", self.ifname, client, exc)

    def _reg(self) -> Registry:
        if self._registry is None:
            self._registry = self._open()
        return self._registry

    # -- the ticker ------------------------------------------------------------------------

    def _tick_loop(self) -> None:
        last_touch = last_tick = time.monotonic()
        while not self._stop.is_set():
            # Without login nothing runs on a clock: sleep until woken (an action, login turned on, close).
            self._wake.wait(None if self.login is None else max(0.0, TICK - (time.monotonic() - last_tick)))
            self._wake.clear()
            self._process_actions()
            service = self.login
            if service is None or time.monotonic() - last_tick < TICK:
                continue
            last_tick = time.monotonic()
            try:
                service.tick(self._counters())
                self._process_actions()
                if time.monotonic() - last_touch >= TOUCH_EVERY:
                    last_touch = time.monotonic()
                    self._sessions_file.flush(force=True)
                    updates = [(s.session_id, s.last_activity, s.input_octets, s.output_octets)
                               for s in service.sessions_list()]
                    if updates:
                        self._reg().touch_sessions(updates)
            except RegistryError as exc:
                log.warning("%s: sessions' activity not written to the registry: %s", self.ifname, exc)
                with self._lock:
                    if self._registry is not None:
                        self._registry.close()
                        self._registry = None
            except Exception:  # noqa: BLE001 - the ticker must outlive one bad tick
                log.exception("%s: session tick failed", self.ifname)

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict:
        """For `tunnel show` (its "lines") and scripts: the policy, login and denied attempts per client."""
        out: dict = {"policy": self._policy_active, "login": self._auth.backend if self._auth else None}
        lines = ["access policy: " + ("in force (default deny)" if self._policy_active else "none (all allowed)")]
        if self.login is not None:
            sessions = [s.summary() for s in self.login.sessions_list()]
            out["sessions"] = sessions
            who = ", ".join(f"{s['user']}@{s['client']}" for s in sessions) or "nobody"
            lines.append(f"login: {self._auth.describe()}; logged in here: {who}")
        if self._policy_active:
            try:
                counters = deny_counters(self.ifname, self._clients)
                out["denied"] = {name: dict(reasons) for name, reasons in counters.by_client_reason.items()}
                if out["denied"]:
                    lines.append("denied: " + ", ".join(f"{name} {sum(r.values())}"
                                                        for name, r in sorted(out["denied"].items())))
            except nft.NftError as exc:
                out["denied_error"] = str(exc)
        out["lines"] = lines
        return out

    def metric_families(self):
        """Prometheus families: denied packets per client and reason, logged-in users."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        iface = self.ifname
        if self._policy_active:
            denied = CounterMetricFamily("tunnel_policy_denied_packets_total",
                                         "Packets the access policy denied, by client and reason",
                                         labels=["interface", "client", "reason"])
            try:
                for name, reasons in deny_counters(iface, self._clients).by_client_reason.items():
                    for reason, n in reasons.items():
                        denied.add_metric([iface, name, str(reason)], n)
            except nft.NftError:
                pass
            yield denied
        if self.login is not None:
            sessions = GaugeMetricFamily("tunnel_login_sessions", "Users logged in through this gateway",
                                         labels=["interface"])
            sessions.add_metric([iface], len(self.login.sessions_list()))
            yield sessions


def _is_host(address: str) -> bool:
    if "/" not in address:
        return True
    prefix = int(address.split("/")[1])
    return prefix == (128 if ":" in address else 32)


__all__ = ["AccessControl", "ALLOW_ALL"]
