"""The daemon's notifier: events in, messages out, never blocking the daemon.

It listens on the daemon's one event subscription. For each event it works out the
deliveries (admin `[[notify]]` rules and the users' own rules, read from Redis and cached
briefly) and puts them on a bounded queue; one delivery task group sends them, each in its
own task with a deadline, retried with back-off. A receiver that is down or slow costs a
task and a little memory, never another delivery's time or the daemon's: when too many are
in flight or queued, new ones are dropped (and logged). Per recipient a token bucket limits
the rate; the same unreserved use is notified once per `notify_repeat`.
"""

from __future__ import annotations

import logging
import pwd
from dataclasses import dataclass, field

import anyio

from ..events import Event
from ..render.events import describe
from . import channels
from .channels import DeliveryError
from .rules import Rule, subjects, user_rules

log = logging.getLogger("canhazgpu.serve")

QUEUE_MAX = 1000  # deliveries waiting for a task
IN_FLIGHT_MAX = 200  # deliveries being sent (slow receivers included)
THREADS = 32  # worker threads sending at once, all targets together
PER_TARGET = 4  # of which one target (a URL, a user's terminals) may hold
ATTEMPT_S = 10.0  # one attempt's deadline
RETRIES = (1.0, 4.0, 15.0)  # back-off before the 2nd, 3rd and 4th attempts
RATE = 20  # messages per recipient and channel target ...
RATE_PER_S = RATE / 60.0  # ... refilled over a minute
RULES_TTL_S = 2.0  # users' rules are read again after this
# Events the notifier follows whatever the rules: unreserved use, for its reminders.
FOLLOWED = ("unreserved_detected", "unreserved_cleared", "usage_changed", "pool_changed")
REPEATED = ("unreserved_detected", "foreign_use")  # once per user and GPU per notify_repeat


@dataclass(frozen=True)
class Delivery:
    rule: Rule
    doc: dict  # the event
    subject: str | None  # the user it is for (terminal: whose ttys); None: the admin's
    title: str
    body: str
    uid: int = -1


@dataclass
class Bucket:
    tokens: float = RATE
    at: float = 0.0


@dataclass
class Notifier:
    core: object  # the daemon's Core: config, store
    ttys: object = None  # candidate terminals (tests); None: the machine's
    sent: list = field(default_factory=list)  # (Delivery, error or None), the last 1000

    def __post_init__(self) -> None:
        self.config = self.core.config
        self.admin_rules: tuple[Rule, ...] = tuple(self.config.notify)
        self.repeat_s = self.config.seconds("notify_repeat")
        self.host = self.config.host_name
        self._rules: tuple[float, dict] = (-RULES_TTL_S, {})
        self._admin_types = _types(self.admin_rules)  # the event types the rules name
        self._types = frozenset()  # (the users' rules, as last read)
        self._buckets: dict[tuple, Bucket] = {}
        self._repeats: dict[tuple, float] = {}
        self.in_flight = 0
        self.ongoing: dict[int, dict] = {}  # GPU -> its unreserved_detected, while it lasts
        self.threads = anyio.CapacityLimiter(THREADS)
        self._per_target: dict[tuple, anyio.CapacityLimiter] = {}

    # ------------------------------------------------------------------ the daemon's task
    async def run(self, stream, *, task_status=anyio.TASK_STATUS_IGNORED) -> None:
        send, receive = anyio.create_memory_object_stream[Delivery](QUEUE_MAX)
        async with anyio.create_task_group() as tg, send:
            tg.start_soon(self._deliverer, receive)
            tg.start_soon(self._reminders, send)
            task_status.started()
            async for item in stream:
                if isinstance(item, Event):
                    for doc in (item.data, *self._follow(item)):
                        await self._enqueue(send, doc)

    async def _enqueue(self, send, doc: dict) -> None:
        try:
            planned = await self.plan(doc)
        except Exception:  # a bug: logged; the daemon and the other events go on
            log.exception("notify: event %s not handled", doc.get("seq"))
            return
        for d in planned:
            try:
                send.send_nowait(d)
            except anyio.WouldBlock:
                log.warning("notify: queue full, dropped %s to %s", d.doc.get("type"),
                            d.rule.target())

    def wants(self, item) -> bool:
        """Whether an event may matter (the hub asks before waking us): unreserved use,
        followed for its reminders; one an admin rule names; news for some user that
        their rules name (as last read; any while they are due to be read again)."""
        if not isinstance(item, Event):
            return False
        if item.type in FOLLOWED or _named(self._admin_types, item.type):
            return True
        return bool(subjects(item.data)) and (
            _named(self._types, item.type) or
            anyio.current_time() - self._rules[0] >= RULES_TTL_S)

    def _follow(self, event: Event) -> list[dict]:
        """Unreserved use that goes on, for its reminders (one per notify_repeat); returns
        it again when more users joined it (each new one is told, the others are not)."""
        joined = []
        for gpu in event.gpus:
            if event.type == "unreserved_detected":
                self.ongoing[gpu] = event.data
            elif event.type == "unreserved_cleared":
                self.ongoing.pop(gpu, None)
            elif event.type == "usage_changed" and gpu in self.ongoing:
                users = list(dict.fromkeys(p.get("user") for p in
                                           event.data.get("processes") or () if p.get("user")))
                doc = self.ongoing[gpu]
                if set(users) - set(doc.get("users") or ()):
                    doc = self.ongoing[gpu] = {**doc, "users": users,
                                               "processes": event.data.get("processes")}
                    joined.append(doc)
        if event.type == "pool_changed":
            self.ongoing.clear()
        return joined

    async def _reminders(self, send) -> None:
        while True:
            await anyio.sleep(min(60.0, self.repeat_s / 4))
            for doc in list(self.ongoing.values()):
                await self._enqueue(send, doc)  # allowed() lets one through per repeat

    async def _deliverer(self, receive) -> None:
        async with anyio.create_task_group() as tg, receive:
            async for d in receive:
                if self.in_flight >= IN_FLIGHT_MAX:
                    log.warning("notify: %d deliveries in flight, dropped %s to %s",
                                self.in_flight, d.doc.get("type"), d.rule.target())
                    continue
                self.in_flight += 1
                tg.start_soon(self._deliver, d)

    async def _deliver(self, d: Delivery) -> None:
        try:
            error = None
            for pause in (0.0, *RETRIES):
                await anyio.sleep(pause)
                error = await self.attempt(d)
                if error is None or "Apprise library" in error:
                    break
            if error:
                log.warning("notify: %s to %s failed: %s", d.doc.get("type"),
                            d.rule.target(), error)
            self.sent = [*self.sent[-999:], (d, error)]
        finally:
            self.in_flight -= 1

    async def attempt(self, d: Delivery) -> str | None:
        """One try with a deadline; the error's line, or None when delivered."""
        try:
            with anyio.fail_after(ATTEMPT_S):
                # threads of our own (never the daemon's scans'), a few per target: a slow
                # receiver waits on its own limiter, holding no thread another one needs
                async with self._target_limiter(d.rule):
                    await anyio.to_thread.run_sync(self.send_now, d, abandon_on_cancel=True,
                                                   limiter=self.threads)
            return None
        except TimeoutError:
            return f"no answer within {ATTEMPT_S:g}s"
        except DeliveryError as err:
            return str(err)
        except Exception as err:  # a channel's library failing its own way
            return f"{type(err).__name__}: {err}"

    def _target_limiter(self, rule: Rule) -> anyio.CapacityLimiter:
        key = (rule.channel, rule.url, rule.uid)
        limiter = self._per_target.get(key)
        if limiter is None:
            if len(self._per_target) > 10_000:
                self._per_target.clear()
            limiter = self._per_target[key] = anyio.CapacityLimiter(PER_TARGET)
        return limiter

    def send_now(self, d: Delivery) -> None:
        """Deliver one message (blocking: a worker thread)."""
        rule = d.rule
        if rule.channel == "terminal":
            channels.write_terminals(d.uid, d.title, d.body, self.ttys)
        elif rule.channel == "webhook":
            channels.post_webhook(rule.url, {"text": d.body, "title": d.title,
                                             "host": self.host, "user": d.subject,
                                             "event": d.doc}, ATTEMPT_S)
        else:
            channels.send_apprise(rule.url.replace("{user}", d.subject or ""), d.title,
                                  d.body)

    # ------------------------------------------------------------------ who gets what
    async def user_rules(self) -> dict[str, list[Rule]]:
        """user name -> their own rules, read at most every RULES_TTL_S."""
        at, rules = self._rules
        now = anyio.current_time()
        if now - at >= RULES_TTL_S:
            try:
                stored = await self.core.store.notify_rules()
            except Exception as err:  # Redis away: the last rules known
                log.debug("notify: rules not read: %s", err)
                return rules
            rules = {}
            for uid, entry in stored.items():
                rules.setdefault(entry["user"], []).extend(user_rules(uid, entry))
            self._rules = (now, rules)
            self._types = _types(r for rs in rules.values() for r in rs)
        return rules

    async def plan(self, doc: dict, now: float | None = None) -> list[Delivery]:
        """The deliveries of one event: admin rules, then each subject's own rules."""
        kind = doc.get("type", "")
        about = subjects(doc)
        title = f"canhazgpu on {doc.get('host') or self.host}"
        plans: list[tuple[Rule, str | None]] = []
        for rule in self.admin_rules:
            if not rule.wants(kind):
                continue
            mine = [u for u in about if not rule.users or u in rule.users]
            if rule.channel == "terminal" or "{user}" in rule.url:
                plans += [(rule, u) for u in mine]  # one message per user it is about
            elif mine or not rule.users:
                plans.append((rule, None))
        if about:
            own = await self.user_rules()
            plans += [(rule, u) for u in about for rule in own.get(u, ())
                      if rule.wants(kind) and not rule.everyone]
            plans += [(rule, None) for rules in own.values() for rule in rules
                      if rule.everyone and rule.wants(kind)]  # an admin's, about anyone
        out = []
        for rule, user in plans:
            if not self.allowed(rule, user, doc, now):
                continue
            uid = rule.uid
            if uid < 0 and rule.channel == "terminal":  # NSS may block: off the loop
                uid = await anyio.to_thread.run_sync(_uid, user)
            body = message(doc, user)
            out.append(Delivery(rule, doc, user, title, body, uid))
        return out

    def allowed(self, rule: Rule, user: str | None, doc: dict, now: float | None) -> bool:
        """Rate limit per recipient and target; the same unreserved use once per repeat."""
        now = anyio.current_time() if now is None else now
        target = (user, rule.channel, rule.url, rule.id)
        if doc.get("type") in REPEATED:
            key = (target, doc.get("type"), tuple(doc.get("gpus") or ()), user or
                   ",".join(doc.get("users") or ()))
            last = self._repeats.get(key)
            if last is not None and now - last < self.repeat_s:
                return False
            if len(self._repeats) > 10_000:
                self._repeats.clear()
            self._repeats[key] = now
        bucket = self._buckets.setdefault(target, Bucket(at=now))
        bucket.tokens = min(RATE, bucket.tokens + (now - bucket.at) * RATE_PER_S)
        bucket.at = now
        if bucket.tokens < 1:
            log.warning("notify: rate limit reached for %s via %s", user or "admin",
                        rule.target())
            return False
        bucket.tokens -= 1
        return True


def message(doc: dict, user: str | None) -> str:
    """The text: what happened, said to the user it is about where there is one."""
    kind = doc.get("type")
    gpus = ",".join(map(str, doc.get("gpus") or ()))
    if kind == "unreserved_detected" and user:
        return (f"{user}: you are using GPU {gpus} without a reservation. Please use "
                f"canhazgpu: 'canhazgpu reserve --gpu-ids {gpus}', or "
                "'canhazgpu run --gpus N -- CMD'")
    if kind == "test":
        return doc.get("text") or "canhazgpu test message"
    if kind == "job_ended":  # the jobs' event (docs/jobs.md), whatever else it carries
        code = doc.get("exit_code", doc.get("returncode"))
        job = doc.get("name") or doc.get("job") or doc.get("rid") or "?"
        return f"{doc.get('user') or '?'}: your job {job} ended" + \
            (f" with exit code {code}" if code is not None else "")
    event = Event(type=str(kind), seq=int(doc.get("seq") or 0), time_ms=0, host="",
                  gpus=tuple(doc.get("gpus") or ()), rid=doc.get("rid"),
                  user=doc.get("user"), data=doc)
    return describe(event)


def _uid(user: str | None) -> int:
    if not user:
        return -1
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return -1


def sample_event(user: str, host: str) -> dict:
    """The event `canhazgpu notify test` sends through each of a user's rules."""
    return {"type": "test", "user": user, "host": host,
            "text": f"canhazgpu test message for {user} from {host}: this channel works"}


def _types(rules) -> frozenset:
    """The event types `rules` name ("*": every type)."""
    return frozenset(t for rule in rules for t in rule.events)


def _named(types: frozenset, kind: str) -> bool:
    return kind in types or "*" in types
