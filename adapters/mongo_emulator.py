"""MongoStore's client on an in-process Mongo-API emulator (tests only).

No MongoDB server can be installed on the machines the suite runs on, so the
Mongo adapter is exercised over pymongo-async-mock (mongomock underneath), a
test extra: this module imports only where it is installed. The settings'
``mongodb_url = "mongomock://"`` selects it in ``adapters.factory``; every
``MongoStore`` started that way has an in-memory server of its own, gone when
the process ends.
"""

from __future__ import annotations

from pymongo_async_mock import AsyncMongoMockClient

EMULATOR_SCHEME = "mongomock://"


class EmulatorClient(AsyncMongoMockClient):
    """The emulator's client with PyMongo's awaitable ``close()``.

    pymongo-async-mock 0.1.3 forwards ``close`` to mongomock's synchronous one
    (awaiting it fails on ``None``); there is nothing to release in memory.
    """

    async def close(self) -> None:
        return None


def emulator_client() -> EmulatorClient:
    return EmulatorClient()
