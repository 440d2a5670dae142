"""The Jupyter kernel provisioner (docs/jupyter.md): a kernel holds its GPUs for exactly
its life. Registered as `canhazgpu-provisioner` (entry point group
jupyter_client.kernel_provisioners); needs the `jupyter` extra.

pre_launch reserves (kernelspec metadata.kernel_provisioner.config: gpus, gpu_ids, wait,
note), queueing up to `wait`, and puts CUDA_VISIBLE_DEVICES into the kernel's environment.
The reservation (TYPE kernel) is made by the Jupyter server's process with a heartbeat in
canhazgpu's loop thread, exactly like the Python API's, then moved to the kernel's process
(a daemon reclaims it within a second of the kernel's death) and watched by us as well (no
daemon needed): it ends as soon as the kernel exits, unless the kernel manager is shutting
the kernel down, in which case it is moved back to the server first (a restart keeps the
GPUs; a shutdown or a cull releases them in cleanup).
"""

from __future__ import annotations

import os
from typing import Any

import anyio
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Integer, List, Unicode

from . import pyapi
from .errors import CanHazGpuError

INFO_KEY = "canhazgpu"


class CanHazGpuProvisioner(LocalProvisioner):
    """LocalProvisioner whose kernels run on GPUs reserved with canhazgpu."""

    gpus = Integer(1, config=True, help="How many GPUs the kernel gets.")
    gpu_ids = List(Integer(), default_value=None, allow_none=True, config=True,
                   help="Specific GPU ids instead of a count.")
    queue_wait = Unicode("", config=True, help="Queue up to this long (e.g. 10m) when GPUs "
                                               "are short; empty: fail at once.")
    note = Unicode("", config=True, help="A note shown by canhazgpu status.")

    _held: pyapi.Reservation | None = None

    def __init__(self, **kwargs: Any) -> None:
        # the kernelspec says `wait`, which would hide the provisioner's wait() method
        if "wait" in kwargs:
            kwargs["queue_wait"] = kwargs.pop("wait")
        super().__init__(**kwargs)

    # ------------------------------------------------------------------ the reservation
    @property
    def reservation(self) -> pyapi.Reservation | None:
        """The kernel's live reservation, if any (None once it ended, e.g. a crash)."""
        held = self._held
        return held if held is not None and not held._lease.over else None

    def _label(self) -> str:
        name = getattr(self.kernel_spec, "display_name", "") or "kernel"
        kernel = f"kernel {self.kernel_id} ({name})"
        return f"{kernel}: {self.note}" if self.note else kernel

    async def _reserve(self) -> pyapi.Reservation:
        lease = pyapi.Lease(None if self.gpu_ids else self.gpus, self.gpu_ids or None,
                            self.queue_wait or None, self._label(), kind="kernel")
        res = await anyio.to_thread.run_sync(pyapi.start, lease)
        return pyapi.Reservation(lease, res, set_env=False)

    async def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            await anyio.to_thread.run_sync(held.release)

    # ------------------------------------------------------------------ the life cycle
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Reserve (or keep, on a restart) the GPUs, then prepare the launch with
        CUDA_VISIBLE_DEVICES set to them."""
        if self.reservation is None:
            self._held = await self._reserve()
        try:
            kwargs = await super().pre_launch(**kwargs)
        except BaseException:
            await self._release()
            raise
        kwargs["env"][pyapi.ENV] = self._held.cuda_visible_devices
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any):
        try:
            return await super().launch_kernel(cmd, **kwargs)
        except BaseException:
            await self._release()
            raise

    async def post_launch(self, **kwargs: Any) -> None:
        await super().post_launch(**kwargs)
        await self._hand_to_kernel()

    async def _hand_to_kernel(self) -> None:
        """The running kernel owns the reservation (a daemon reclaims it within a second of
        the kernel's death), and we watch it too (no daemon needed): its end ends the
        reservation, unless the kernel manager is shutting it down (cleanup decides)."""
        held = self.reservation
        if held is None or not self.pid:
            return
        km = self.parent
        await self._move(self.pid)
        pyapi.portal().call(held._lease.end_when_gone, self.pid,
                            lambda: bool(getattr(km, "shutting_down", False)))

    async def _move(self, pid: int) -> None:
        held = self.reservation
        if held is None:
            return
        try:
            await anyio.to_thread.run_sync(pyapi.portal().call, held._lease.move_to, pid)
        except CanHazGpuError as err:  # still held by us: a kernel crash frees it in cleanup
            self.log.warning("canhazgpu: reservation %s stays with the server: %s",
                             held.rid, err)

    async def _before_stopping(self) -> None:
        """A shutdown or restart is about to end the kernel: hold the GPUs in the server
        again first, so that the kernel's end is not taken for a crash."""
        if getattr(self.parent, "shutting_down", False):
            await self._move(os.getpid())

    async def send_signal(self, signum: int) -> None:
        await self._before_stopping()  # the kernel manager's shutdown interrupts first
        await super().send_signal(signum)

    async def shutdown_requested(self, restart: bool = False) -> None:
        await self._before_stopping()
        await super().shutdown_requested(restart=restart)

    async def terminate(self, restart: bool = False) -> None:
        await self._before_stopping()
        await super().terminate(restart=restart)

    async def kill(self, restart: bool = False) -> None:
        await self._before_stopping()
        await super().kill(restart=restart)

    async def cleanup(self, restart: bool = False) -> None:
        await super().cleanup(restart=restart)
        if not restart:
            await self._release()

    # ------------------------------------------------------------------ persistence
    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        held = self.reservation
        if held is not None:
            info[INFO_KEY] = {"rid": held.rid, "gpus": list(held.ids)}
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        """A restarted Jupyter server taking over a running kernel: hold its reservation
        again (renewed at once; lost if it ran out and someone else took the GPUs)."""
        await super().load_provisioner_info(provisioner_info)
        mine = provisioner_info.get(INFO_KEY)
        if not mine or self.reservation is not None:
            return
        lease = pyapi.Lease(kind="kernel", note=self._label(),
                            adopt=(str(mine["rid"]), tuple(int(i) for i in mine["gpus"])))
        res = await anyio.to_thread.run_sync(pyapi.start, lease)
        self._held = pyapi.Reservation(lease, res, set_env=False)
        await self._hand_to_kernel()


# ---------------------------------------------------------------------- kernelspecs
PROVISIONER = "canhazgpu-provisioner"


def install_spec(gpus: int = 1, source: str = "python3", name: str | None = None, *,
                 user: bool = True, prefix: str | None = None, wait: str = "",
                 note: str = "") -> tuple[str, str]:
    """Clone the installed kernelspec `source` into one that runs on `gpus` GPUs held by
    canhazgpu; returns (its name, where it was installed)."""
    import json
    import shutil
    import tempfile

    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    from .errors import InvalidRequest
    from .request import parse_count
    gpus = parse_count(gpus)
    if wait:
        pyapi._seconds(wait)  # a bad value is refused now, not at the kernel's start
    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(source)
    except NoSuchKernel:
        raise InvalidRequest(f"no kernelspec named {source!r}: see 'canhazgpu kernelspec "
                             "list --all' (or 'jupyter kernelspec list')") from None
    name = name or f"{source}-{gpus}gpu"
    doc = spec.to_dict()
    base = (doc.get("display_name") or source).removesuffix(" (ipykernel)")
    doc["display_name"] = f"{base} ({gpus} GPU{'s' if gpus > 1 else ''}, canhazgpu)"
    config: dict[str, Any] = {"gpus": gpus}
    if wait:
        config["wait"] = wait
    if note:
        config["note"] = note
    doc.setdefault("metadata", {})["kernel_provisioner"] = {
        "provisioner_name": PROVISIONER, "config": config}
    with tempfile.TemporaryDirectory() as tmp:
        staged = os.path.join(tmp, name)
        shutil.copytree(spec.resource_dir, staged)
        with open(os.path.join(staged, "kernel.json"), "w") as out:
            json.dump(doc, out, indent=1)
        try:
            where = ksm.install_kernel_spec(staged, kernel_name=name, user=user,
                                            prefix=prefix)
        except ValueError as err:  # a name Jupyter refuses
            raise InvalidRequest(f"invalid kernelspec name {name!r}: {err}") from None
        except OSError as err:
            raise InvalidRequest(f"cannot install kernelspec {name!r} ({err.strerror or err}):"
                                 " use --user, or run it with the rights to write there") \
                from None
    return name, where


def list_specs(every: bool = False) -> list[dict]:
    """The installed kernelspecs that use canhazgpu's provisioner (every=True: all)."""
    from jupyter_client.kernelspec import KernelSpecManager
    rows = []
    for name, found in sorted(KernelSpecManager().get_all_specs().items()):
        spec = found.get("spec") or {}
        prov = (spec.get("metadata") or {}).get("kernel_provisioner") or {}
        ours = prov.get("provisioner_name") == PROVISIONER
        if ours or every:
            config = prov.get("config") or {}
            rows.append({"name": name, "display_name": spec.get("display_name", ""),
                         "canhazgpu": ours, "gpus": config.get("gpus", 1) if ours else None,
                         "wait": config.get("wait", ""), "note": config.get("note", ""),
                         "path": found.get("resource_dir", "")})
    return rows
