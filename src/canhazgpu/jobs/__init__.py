"""Detached jobs (docs/jobs.md): `submit` writes a job file, one agent per user and host
holds the queued jobs' places in the FIFO queue, and each granted job runs under its own
supervisor process (runner.py)."""
