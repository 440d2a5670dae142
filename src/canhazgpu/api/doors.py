"""The doors to the operation table (ops.py): what commands, the Python API and the jobs
call. A door has the methods of the core that callers know (`view()`, `release(caller,
ids=...)`, `acquire(req, caller, wait_s)`, ...), bound from the table, so each operation is
declared once. `Local` serves the table in this process (direct mode); `RemoteCore`
(client.py) sends it to the daemon. Either way the operation's arguments are checked by the
table, its authority rule applied, and the same code answers.
"""

from __future__ import annotations

from contextlib import nullcontext

from .ops import CALLBACKS, METHODS, OPS


class Door:
    """The methods of door `kind` ("core", "hosts", "store"), bound from the table."""

    kind = "core"

    def __getattr__(self, attr: str):
        op = METHODS.get((self.kind, attr))
        if op is None:
            return self._other(attr)
        names = op.method[2]

        async def method(*args, **kwargs):
            if len(args) > len(names):
                raise TypeError(f"{attr}() takes {len(names)} arguments: {', '.join(names)}")
            bound = dict(zip(names, args))
            for key, value in kwargs.items():
                if key not in names and key not in CALLBACKS or key in bound:
                    raise TypeError(f"{attr}() got an unexpected argument {key!r}")
                bound[key] = value
            return await self._call(op, bound)
        method.__name__ = attr
        return method

    def _other(self, attr: str):
        raise AttributeError(attr)

    async def _call(self, op, bound: dict):
        raise NotImplementedError

    async def notify(self, caller, op: str, **args):
        """The caller's own notification rules (notify_add, _list, _remove, _test)."""
        if f"notify_{op}" not in OPS:
            from ..errors import InvalidRequest
            raise InvalidRequest(f"unknown notify operation {str(op)[:40]!r}: use add, list, "
                                 "remove or test")
        if "rule_id" in args:
            args = {"id": args.pop("rule_id"), **args}
        return await self._call(OPS[f"notify_{op}"], {"caller": caller, **args})


class Local(Door):
    """The table served in this process, over `core`'s own Redis connections, for
    `caller()` (or the caller a call names: `run` passes its supervisor's)."""

    def __init__(self, core, caller, kind: str = "core") -> None:
        self.core, self.caller, self.kind = core, caller, kind

    def _other(self, attr: str):
        return getattr(self.core, attr)  # config, store, record, ...: the core's own

    @property
    def hosts(self) -> Local:
        return Local(self.core, self.caller, "hosts")

    async def _call(self, op, bound: dict):
        caller = bound.pop("caller", None) or self.caller()
        callbacks = {k: bound[k] for k in CALLBACKS if k in bound}
        return await op.serve(Served(self.core, caller, **callbacks), op.pack(bound))


class Served:
    """What an operation is served with in this process: the core, the caller, and the
    caller's own callbacks for a waiter's progress and warnings. The daemon's
    counterpart (server.py) sends these as reply lines."""

    local = True
    hub = None

    def __init__(self, core, caller, progress=None, warn=None, signals: bool = True) -> None:
        self.core, self.caller = core, caller
        self.progress = progress or (lambda p: None)
        self.warn = warn or (lambda text: None)
        self.signals = signals

    def core_with(self, *names):
        return self.core  # our own settings are the core's

    async def owner(self):
        return self.caller

    def queued_by(self, uid: int):
        return nullcontext()

    def stay(self) -> None:
        pass

    async def line(self, doc: dict) -> None:
        pass

    def note(self, doc: dict) -> None:
        pass
