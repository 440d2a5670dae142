"""A job's steps on the host's event stream (job_submitted, job_started, job_ended)."""

from __future__ import annotations

from ..errors import CanHazGpuError


def event(job, kind: str) -> dict:
    doc = job.doc
    record = doc.get("record") or {}
    return {"type": kind, "job": doc["id"], "name": doc.get("name", ""),
            "user": doc.get("user", ""), "uid": doc.get("uid", -1), "rid": doc.get("rid"),
            "gpus": list(doc.get("gpus") or []), "state": doc.get("state"),
            "exit_code": doc.get("exit_code"), "reason": doc.get("reason", ""),
            "kind": record.get("kind", "job")}


async def publish(core, job, kind: str) -> None:
    """Announce a step; an unreachable Redis loses the announcement, never the job."""
    try:
        await core.job_event(event(job, kind))
    except CanHazGpuError:
        pass
