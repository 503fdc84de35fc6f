"""Test-session wiring shared by every suite.

RabbitMQ isolation: unless ``AMQP_URL`` is set, the session creates its own
virtual host on the local broker (``rabbitmqctl add_vhost``) and points
``AMQP_URL`` at it, so concurrent test runs on one machine never see each
other's queues; the vhost is deleted at the end. Tests that stop the broker
(``rabbitmqctl stop_app``) still affect everyone: they are few and marked.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

_CREATED_VHOST: str | None = None


def _ctl(*args: str) -> bool:
    try:
        subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def _create_vhost() -> None:
    global _CREATED_VHOST
    if os.environ.get("AMQP_URL") or shutil.which("rabbitmqctl") is None:
        return
    vhost = f"cer-test-{os.getpid()}"
    if _ctl("add_vhost", vhost) and _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"):
        _CREATED_VHOST = vhost
        os.environ["AMQP_URL"] = f"amqp://guest:guest@127.0.0.1/{vhost}"


# At import, not in pytest_configure: pytest imports the conftests below this one
# (which read AMQP_URL into module constants) before it calls pytest_configure.
_create_vhost()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _CREATED_VHOST is not None:
        _ctl("delete_vhost", _CREATED_VHOST)
