"""End-to-end fixtures: the real app over HTTP, on three backends.

* ``embedded``: the in-process bus and the embedded store (the default run);
* ``rabbitmq``: RabbitMQ and the embedded store;
* ``mongo``: RabbitMQ and the MongoDB store, on a real MongoDB when
  ``MONGODB_URL`` is set, else on the in-process Mongo-API emulator
  (``adapters/mongo_emulator.py``; no MongoDB server can run here).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from adapters.rabbit_bus import delete_queues, queue_names
from gateway.http.app import create_app
from gateway.settings import Settings

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1/")
# Event consumer groups the end-to-end tests use (their queues are deleted around tests).
E2E_GROUPS = ("test-slice", "webhooks", "webhook-deliveries", "notifications", "waiting-room")


async def purge_rabbit(settings: Settings, groups: tuple[str, ...] = E2E_GROUPS) -> None:
    """Delete the gateway's queues so each test starts from an empty broker."""
    names = queue_names(settings.command_partitions, settings.bus_retry_delays, groups)
    try:
        await delete_queues(AMQP_URL, names)
    except Exception as exc:  # pragma: no cover - the broker must run where tests run
        pytest.fail(f"RabbitMQ is not reachable at {AMQP_URL}: {exc!r}")


def settings_for(backend: str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "cer_mode": "sandbox",
        "retry_delays": [0.2, 0.5],
        "command_timeout_seconds": 20.0,
        "outbox_poll_seconds": 0.05,
    }
    # Settings read AMQP_URL / MONGODB_URL from the environment, and the test
    # session sets AMQP_URL (tests/conftest.py): without these explicit values
    # an "embedded" run would quietly use RabbitMQ.
    base["amqp_url"] = AMQP_URL if uses_rabbit(backend) else None
    base["mongodb_url"] = None
    if backend == "mongo":
        base["mongodb_url"] = os.environ.get("MONGODB_URL") or "mongomock://"
        base["mongodb_db"] = f"cer_e2e_{uuid.uuid4().hex[:12]}"
    base.update(overrides)
    return Settings(**base)


def uses_rabbit(backend: str) -> bool:
    """Whether the backend's bus is the real broker (its queues need purging)."""
    return backend in ("rabbitmq", "mongo")


@pytest.fixture(params=["embedded", "rabbitmq", "mongo"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def client(
    backend: str, aiohttp_client: Callable[..., Any]
) -> AsyncIterator[TestClient[Any, Any]]:
    settings = settings_for(backend)
    if uses_rabbit(backend):
        await purge_rabbit(settings)
    app = create_app(settings)
    yield await aiohttp_client(app)


async def new_provider(client: TestClient[Any, Any]) -> dict[str, Any]:
    resp = await client.post("/sandbox/providers", json={"name": "Test clinic"})
    assert resp.status == 201, await resp.text()
    data: dict[str, Any] = await resp.json()
    return data


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
