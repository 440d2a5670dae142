"""The `canhazgpu` command group, shared options, and the one place errors become exit codes."""

from __future__ import annotations

import os
import sys
from importlib import import_module

import asyncclick as click
from asyncclick.exceptions import NoArgsIsHelpError

from .. import __version__
from ..errors import CanHazGpuError, NeedsEventLoop, boundary, without_loop
from . import output, runner

COMPLETE_VAR = "_CANHAZGPU_COMPLETE"  # asyncclick's protocol: _{PROG}_COMPLETE=bash_complete
EPILOG = """\b
Examples:
  canhazgpu admin --gpus 8                 # create the pool (once)
  canhazgpu status                         # who holds what, and who uses GPUs unreserved
  canhazgpu run --gpus 2 -- python train.py
  canhazgpu reserve --gpus 1 --duration 4h
  canhazgpu release
  eval "$(canhazgpu completion bash)"      # tab completion (also zsh, fish)
The global options work before or after the command name: canhazgpu status --host gpu7
Documentation: canhazgpu help TOPIC; settings and checks: canhazgpu doctor
"""


class Context:
    """Built lazily so `--help` and bad flags never touch Redis or the GPUs."""

    def __init__(self) -> None:
        self.flags: dict = {}  # the global options given (config keys, and "config")
        self._config = None
        self._core = None
        self._direct_core = None
        self._hosts = None
        self.command: str | None = None  # the command that runs (set by the group)

    @property
    def config(self):
        if self._config is None:
            from ..config import load
            self._config = load(self.flags)
        return self._config

    @property
    def core(self):
        """The daemon's API when it answers (setting `client`: auto, daemon or direct),
        else the core over Redis: the same operations either way."""
        if self._core is None:
            self._core = self._remote() or self._direct()
        return self._core

    async def connect(self):
        """The core, found without blocking the event loop (the daemon's handshake runs in a
        worker thread): for callers inside a loop they share, the Python API."""
        if self._core is None:
            import anyio
            self._core = await anyio.to_thread.run_sync(self._remote) or self._direct()
        return self._core

    @property
    def remote(self) -> bool:
        from ..api.client import RemoteCore
        return isinstance(self.core, RemoteCore)

    def _remote(self, any_host: bool = False):
        if self.config.client == "direct":
            return None
        from ..api.client import RemoteCore, find_daemon
        path, why = find_daemon(self.config, any_host)
        if path is not None:
            return RemoteCore(self.config, path)
        if self.config.client == "daemon":
            from ..errors import BackendUnavailable
            if why is not None:
                raise BackendUnavailable(f"{why}: drop that setting to use the daemon, or "
                                         "set client = direct")
            where = " or ".join(map(str, self.config.api_paths()))
            raise BackendUnavailable(f"no canhazgpu daemon answers at {where}: start it with "
                                     "'canhazgpu serve', or set client = auto")
        return None

    def _direct(self):
        """The operation table served in this process, over Redis (api/doors.py). Without
        an event loop, the reads of the QUICK commands over a blocking connection
        (quickread.py); whatever else they ask raises NeedsEventLoop, as does every other
        command: redis-py is asked within an event loop."""
        from ..api.doors import Local
        from ..core import Core
        if not without_loop():
            return Local(Core(self.config), self.local_caller)
        if self.command not in QUICK:
            raise NeedsEventLoop
        from ..quickread import QuickStore
        store = QuickStore(self.config.redis.url, self.config.host_name)  # NeedsEventLoop for
        # a URL it does not serve (TLS), before any Redis is asked
        return Local(Core(self.config, store), self.reader)

    @property
    def direct(self):
        """The core over Redis itself, whatever the mode: for what no daemon serves (the
        events of every host, the views across hosts when no daemon answers)."""
        if self._core is not None and not self.remote:
            return self._core.core  # direct already: the same connections
        if self._direct_core is None:  # no need to ask for a daemon first
            self._direct_core = self._direct()
        return self._direct_core.core

    @property
    def hosts(self):
        """The views across hosts (`hosts`, --all-hosts, --host a,b) and `admin --retire`:
        asked of a daemon on our Redis, whichever host it serves (a user of a secured host
        cannot reach its Redis), else read over Redis here (docs/hosts.md)."""
        if self._hosts is None:
            remote = self._core if self._core is not None and self.remote \
                else self._remote(any_host=True)
            if remote is not None:
                self._hosts = remote.hosts
            else:
                from ..api.doors import Local
                who = self.reader if without_loop() else self.local_caller  # (quickread)
                self._hosts = Local(self.direct, who, "hosts")
        return self._hosts

    def local_caller(self, pid: int | None = None):
        """Who we are, looked up here (direct mode's identity, for direct operations)."""
        from ..identity import current
        return current(self.config.admin_group, pid)

    def reader(self, pid: int | None = None):
        """local_caller() for the loopless reads: no process start time (no psutil); any
        change they reach runs again in a loop, with local_caller()."""
        from ..identity import current
        return current(self.config.admin_group, pid, started=False)

    def event_hub(self):
        """The host's events: from the daemon, or subscribed to Redis directly."""
        if without_loop():
            raise NeedsEventLoop
        if self.remote:
            from ..api.hub import RemoteHub
            return RemoteHub(self.core)
        from ..events import EventHub
        return EventHub(self.core.store)

    def caller(self, pid: int | None = None):
        from ..identity import Caller, user_name
        if self.remote:  # the daemon asks the kernel who we are: nothing to look up here
            uid = os.getuid()
            return Caller(user_name(uid), uid, os.getpid(), 0.0, False)
        return self.local_caller(pid)

    async def aclose(self) -> None:
        for core in (self._core, self._direct_core):
            if core is not None:
                await core.aclose()


# ---------------------------------------------------------------------- global options
class GlobalOption(click.Option):
    """An option of every command, before or after its name (`canhazgpu --host X status` is
    `canhazgpu status --host X`); given in both places, the later one wins."""


def _set_flag(ctx, param, value) -> None:
    if value is not None:
        ctx.ensure_object(Context).flags[param.name] = value


def _no_color(ctx, param, value) -> None:
    if value:
        output.disable_color()


def global_options() -> list[click.Option]:
    """A fresh set of the global options, for the group and for each command."""
    def flag(name, metavar, text):
        return GlobalOption([name], metavar=metavar, help=text, expose_value=False,
                            callback=_set_flag)
    return [
        flag("--config", "FILE", "Config file to read (env CANHAZGPU_CONFIG)."),
        flag("--redis-url", "URL", "Redis to use (env CANHAZGPU_REDIS_URL)."),
        flag("--host", "NAME", "Host name used in keys (env CANHAZGPU_HOST)."),
        flag("--client", "MODE", "auto (the daemon's API when it answers, else Redis), daemon "
                                 "or direct (env CANHAZGPU_CLIENT)."),
        flag("--memory-threshold", "MB", "Used memory at or above which a GPU is in use "
                                          "(default 1024)."),
        GlobalOption(["--no-color"], is_flag=True, expose_value=False, callback=_no_color,
                     help="No colours, even on a terminal (like NO_COLOR=1)."),
    ]


class Command(click.Command):
    """A command of canhazgpu: its own options, then the global ones."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(global_options())

    def format_options(self, ctx, formatter) -> None:
        own, common = [], []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                (common if isinstance(param, GlobalOption) else own).append(record)
        for title, records in (("Options", own), ("Global options", common)):
            with formatter.section(title):
                formatter.write_dl(records)

    def shell_complete(self, ctx, incomplete):
        if ctx.params.get("command"):  # inside the command line of run/wait: not our options
            from .completion import files
            return files(incomplete)
        return super().shell_complete(ctx, incomplete)


# name -> (module of cli/, short help): `--help` and completion list the commands from here,
# and a command's module is imported only when that command runs (start-up time).
# A new command: its module, a row here, and the module in _register(); tests check the rows.
COMMANDS = {
    "admin": ("admin", "Create or resize this host's GPU pool (root or the admin group)."),
    "cancel": ("submit", "Cancel jobs: a queued one leaves the queue, a running one stops."),
    "completion": ("completion", "Print the tab completion script for bash, zsh or fish."),
    "config": ("doctor", "Show the effective settings and where each came from."),
    "doctor": ("doctor", "Check that Redis, the pool, the daemon and the GPUs answer."),
    "events": ("events", "Follow the host's events: reservations, queue, GPU usage."),
    "help": ("manual", "Read the documentation of a command or topic."),
    "hosts": ("hosts", "Every host sharing this Redis: its GPUs, queue and daemon."),
    "kernelspec": ("kernelspec", "Jupyter kernels on GPUs reserved for the kernel's life."),
    "jobs": ("submit", "Your detached jobs: state, queue place or GPUs, exit code."),
    "logs": ("submit", "Print a job's output (the latest 4-8 MiB are kept)."),
    "notify": ("notify", "Your notifications: add, list, remove or test a channel."),
    "queue": ("queue", "Show who is waiting for GPUs, in order."),
    "release": ("release", "Release your reservations."),
    "report": ("report", "GPU hours per user, with run/manual counts and shares."),
    "reserve": ("reserve", "Reserve GPUs for interactive work until released or expired."),
    "run": ("run", "Run a command on GPUs of its own; release them when it ends."),
    "serve": ("serve", "Run the daemon: scans, instant expiry, crash reclaim, events."),
    "status": ("status", "Show every GPU: available, reserved or in use unreserved."),
    "submit": ("submit", "Queue a command to run on GPUs later, detached; prints its id."),
    "wait": ("wait", "Queue for GPUs (first come, first served), then run or reserve."),
    "web": ("web", "Serve a live web page of the GPUs, an HTTP API and /metrics."),
}


class Group(click.Group):
    """The lazy group: lists COMMANDS without importing them; imports one module when its
    command runs (or is completed). A name not in the table loads every module first."""

    command_class = Command

    def list_commands(self, ctx) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx, cmd_name: str):
        if cmd_name not in self.commands:
            if cmd_name in COMMANDS:
                import_module(f"{__package__}.{COMMANDS[cmd_name][0]}")
            else:
                _register()
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx, formatter) -> None:
        rows = [(name, COMMANDS[name][1] if name in COMMANDS
                 else self.get_command(ctx, name).get_short_help_str(1000))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def shell_complete(self, ctx, incomplete: str):
        from asyncclick.shell_completion import CompletionItem
        if incomplete.startswith("-"):
            return super().shell_complete(ctx, incomplete)
        return [CompletionItem(name, help=COMMANDS.get(name, ("", ""))[1])
                for name in self.list_commands(ctx) if name.startswith(incomplete)]


@click.group(cls=Group, params=global_options(), epilog=EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, package_name="canhazgpu")  # (no importlib.metadata: ~35 ms)
@click.pass_context
async def cli(ctx):
    """canhazgpu: exclusive GPUs on a shared machine, given back when your job ends."""
    state = ctx.ensure_object(Context)
    state.command = ctx.invoked_subcommand
    ctx.call_on_close(_closer(state))


def _closer(state: Context):
    async def close():
        await state.aclose()
    return close


def _register() -> None:
    """Every command's module (tests, and a name missing from COMMANDS)."""
    from . import (admin, completion, doctor, events, hosts, kernelspec,  # noqa: F401
                   manual, notify, queue, release, report, reserve, run, serve, status,
                   submit, wait, web)  # (commands attach)


async def _amain(args: list[str]) -> int:
    try:
        with boundary():  # the CLI's edge: one expected error, however deep it was raised
            result = await cli.main(args=args, prog_name="canhazgpu", standalone_mode=False)
    except CanHazGpuError as err:
        output.error(str(err))
        return err.exit_code
    except NoArgsIsHelpError as err:  # plain `canhazgpu`: the help, not an error
        output.emit(err.ctx.get_help() if err.ctx else str(err))
        return 0
    except click.UsageError as err:
        hint = f" (see 'canhazgpu {err.ctx.command_path.split(' ', 1)[1]} --help')" \
            if err.ctx and " " in err.ctx.command_path else " (see 'canhazgpu --help')"
        output.error(f"{err.format_message()}{hint}")
        return 2
    except click.ClickException as err:
        output.error(err.format_message())
        return err.exit_code
    except click.Abort:
        return 130
    return result if isinstance(result, int) else 0


def main() -> None:
    try:
        code = runner.run(_amain, sys.argv[1:], loop=not loopless(sys.argv[1:]),
                          server=sys.argv[1:2] == ["serve"])
    except KeyboardInterrupt:
        code = 130
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    exit_now(code)


# Commands that, through the daemon, are one request each: tried without an event loop
# (cli/runner.py), unless an option needs one (--follow, --wait; a short-option cluster).
ONE_REQUEST = ("status", "queue", "release", "reserve", "hosts", "report", "submit", "jobs",
               "logs")
# Of those, the ones whose reads direct mode makes without an event loop too (the views, and
# submit's pool size: quickread.py); the others start one in direct mode.
QUICK = ("status", "queue", "hosts", "submit")


def loopless(args: list[str]) -> bool:
    """Whether to try these arguments without an event loop first (start-up time): help,
    the version, a completion script or completions, and the one-request commands."""
    if os.environ.get(COMPLETE_VAR):
        return True
    help_flags = ("-h", "--help")
    if not args or args[0] in (*help_flags, "--version", "completion") or \
            (len(args) == 2 and args[0] in COMMANDS and args[1] in help_flags):
        return True
    return args[0] in ONE_REQUEST and not any(
        arg.startswith(("--follow", "--wait", "-f", "-w")) or
        (arg[:1] == "-" and arg[1:2] != "-" and len(arg) > 2) for arg in args[1:])


def exit_now(code: int) -> None:
    """Flush what we wrote, then leave without the interpreter's teardown.

    Tearing down the modules (redis-py, asyncio, ...) costs ~35 ms of CPU on every command
    on a 2-core machine: a third of `--help`, and time a finished `run` takes from the next
    job. Nothing of ours needs it: children are reaped, files closed, Redis connections end
    with the process, log handlers are flushed here.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if "logging" in sys.modules:  # imported only by the commands that log (serve, web)
        sys.modules["logging"].shutdown()
    os._exit(code)
