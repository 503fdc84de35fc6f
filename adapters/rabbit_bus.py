"""The RabbitMQ message bus (aio-pika): quorum command partitions, topic events,
TTL wait queues for retry tiers, a dead-letter queue, and request/reply.

Topology (names from ``gateway.constants``)::

    cer.commands  (direct)  --"<n>"-->        cer.commands.<n>   quorum, single active consumer
    cer.events    (topic)   --pattern-->      cer.events.<group> quorum
    cer.retry     (direct)  --"<ms>"-->       cer.retry.<ms>     classic, x-message-ttl=<ms>,
                                                                 DLX cer.requeue
    cer.requeue   (direct)  --"<queue>"-->    <queue> (every consumed queue, by its own name)
    cer.dead      (fanout)  ---------->       cer.dead-letters   quorum
    (default)               --reply_to-->     cer.reply.<instance> exclusive, auto-delete

A failed message is copied into a wait queue with routing key ``<ms>`` and a
``CC`` header naming the queue it came from. RabbitMQ dead-letters an expired
message with all the routing keys it was published with (CC included, BCC
never), so through ``cer.requeue`` it lands back in exactly that queue and no
other consumer group sees it twice. There is one wait queue per delay because
a classic queue only expires messages at its head.

At least once: a copy is published (and confirmed) before the original is
acked; a publish whose confirm is lost is retried and may duplicate, so
consumers dedupe by ``Envelope.id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import aio_pika
import aiormq
import orjson
import stamina
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from adapters import event_batch
from gateway.constants import (
    COMMAND_QUEUE_PREFIX,
    COMMANDS_EXCHANGE,
    DEAD_EXCHANGE,
    DEAD_QUEUE,
    EVENT_QUEUE_PREFIX,
    EVENTS_EXCHANGE,
    REPLY_QUEUE_PREFIX,
    REQUEUE_EXCHANGE,
    RETRY_EXCHANGE,
    RETRY_QUEUE_PREFIX,
)
from gateway.ports import (
    Document,
    Envelope,
    MessageHandler,
    Reject,
    ReplyLost,
    RequestTimeout,
    Retry,
)

log = logging.getLogger(__name__)

# Keys added to ``Envelope.headers`` of a dead letter (the same on the embedded bus).
DEAD_REASON = "x-dead-reason"
DEAD_QUEUE_HEADER = "x-dead-queue"

# AMQP headers carrying the envelope fields that have no AMQP property of their own.
H_TENANT = "cer-tenant"
H_ATTEMPT = "cer-attempt"
H_CREATED_AT = "cer-created-at"
H_REPLY_TO = "cer-reply-to"
H_CORRELATION = "cer-correlation-id"
H_HEADERS = "cer-headers"  # Envelope.headers as JSON: AMQP tables do not round-trip every value
H_QUEUE = "cer-queue"  # the queue a retried or dead message came from
H_IN_REPLY_TO = "cer-in-reply-to"

QUORUM = {"x-queue-type": "quorum"}


def partition_of(tenant: str | None, partitions: int) -> int:
    """The command partition of a tenant: stable across processes and restarts."""
    if tenant is None:
        return 0
    return zlib.crc32(tenant.encode()) % partitions


def tier_name(delay: float) -> str:
    return str(round(delay * 1000))


def queue_names(partitions: int, retry_delays: Sequence[float], groups: Iterable[str]) -> list[str]:
    """The durable queues of a topology: command partitions, retry tiers, the consumer
    groups' event queues and the dead letters (what a fresh start deletes)."""
    names = [f"{COMMAND_QUEUE_PREFIX}{n}" for n in range(partitions)]
    names += [f"{RETRY_QUEUE_PREFIX}{tier_name(d)}" for d in retry_delays]
    names += [f"{EVENT_QUEUE_PREFIX}{g}" for g in groups]
    names.append(DEAD_QUEUE)
    return names


async def delete_queues(url: str, names: Iterable[str]) -> None:
    """Delete these queues (with their messages; a missing one is no error)."""
    conn = await aio_pika.connect(url, timeout=5)
    try:
        channel = await conn.channel()
        for name in names:
            await channel.queue_delete(name)
    finally:
        await conn.close()


class _PublishInterrupted(Exception):
    """The channel under a publish closed (aiormq cancels pending confirms)."""


def _retryable(exc: Exception) -> bool:
    return isinstance(
        exc,
        aiormq.exceptions.AMQPError
        | aiormq.exceptions.ChannelInvalidStateError
        | ConnectionError
        | OSError
        | TimeoutError
        | _PublishInterrupted,
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        return value.decode()
    return str(value)


class RabbitBus:
    """``MessageBus`` on RabbitMQ. See the module docstring for the topology."""

    def __init__(
        self,
        url: str,
        *,
        partitions: int,
        prefetch: int,
        retry_delays: Sequence[float],
        instance_id: str | None = None,
        reconnect_interval: float = 1.0,
        publish_timeout: float = 10.0,
        publish_retry_seconds: float = 60.0,
        close_timeout: float = 10.0,
    ) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self._url = url
        self._partitions = partitions
        self._prefetch = prefetch
        self._delays = [float(d) for d in retry_delays]
        self._tiers = sorted(set(self._delays))
        self.instance_id = (
            instance_id or f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        )
        self._reconnect_interval = reconnect_interval
        self._publish_timeout = publish_timeout
        self._publish_retry_seconds = publish_retry_seconds
        self._close_timeout = close_timeout
        self._reset()

    def _reset(self) -> None:
        self._conn: AbstractRobustConnection | None = None
        self._pub: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._channels: list[AbstractRobustChannel] = []
        self._consumed: set[str] = set()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._tails: dict[tuple[str, str | None], asyncio.Event] = {}
        self._pending: dict[str, asyncio.Future[Document]] = {}
        self._reply_queue: str | None = None
        self._reply_lock = asyncio.Lock()
        self._closing = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._conn is not None:
            return
        self._reset()
        self._conn = await aio_pika.connect_robust(
            self._url,
            reconnect_interval=self._reconnect_interval,
            client_properties={"connection_name": f"cer-gateway {self.instance_id}"},
        )
        # Each time the connection drops (the robust connection then reconnects), the
        # exclusive reply queue goes with it: a reply sent meanwhile is dropped.
        self._conn.close_callbacks.add(self._on_connection_lost)
        try:
            await self._declare_topology()
        except BaseException:
            await self._conn.close()
            self._conn = None
            raise

    async def _declare_topology(self) -> None:
        assert self._conn is not None
        pub = await self._conn.channel(publisher_confirms=True, on_return_raises=True)
        assert isinstance(pub, AbstractRobustChannel)
        self._pub = pub
        ex = self._exchanges
        ex[COMMANDS_EXCHANGE] = await pub.declare_exchange(
            COMMANDS_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        ex[EVENTS_EXCHANGE] = await pub.declare_exchange(
            EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        ex[RETRY_EXCHANGE] = await pub.declare_exchange(
            RETRY_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        ex[REQUEUE_EXCHANGE] = await pub.declare_exchange(
            REQUEUE_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        ex[DEAD_EXCHANGE] = await pub.declare_exchange(
            DEAD_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        ex[""] = pub.default_exchange

        for n in range(self._partitions):
            q = await self._declare_command_queue(pub, n)
            await q.bind(COMMANDS_EXCHANGE, routing_key=str(n))
            await q.bind(REQUEUE_EXCHANGE, routing_key=q.name)
        for delay in self._tiers:
            ms = tier_name(delay)
            q = await pub.declare_queue(
                f"{RETRY_QUEUE_PREFIX}{ms}",
                durable=True,
                arguments={"x-message-ttl": int(ms), "x-dead-letter-exchange": REQUEUE_EXCHANGE},
            )
            await q.bind(RETRY_EXCHANGE, routing_key=ms)
        dead = await pub.declare_queue(DEAD_QUEUE, durable=True, arguments=QUORUM)
        await dead.bind(DEAD_EXCHANGE, routing_key="")

    @staticmethod
    async def _declare_command_queue(channel: AbstractRobustChannel, n: int) -> AbstractQueue:
        return await channel.declare_queue(
            f"{COMMAND_QUEUE_PREFIX}{n}",
            durable=True,
            arguments={**QUORUM, "x-single-active-consumer": True},
        )

    async def close(self) -> None:
        """Stop consuming, let running handlers finish (``close_timeout``), disconnect.

        Anything not acked by then goes back to its queue when the connection closes.
        """
        if self._conn is None:
            return
        self._closing = True
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(queue.cancel(tag), 5)
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=self._close_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RequestTimeout("bus closed"))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._conn.close(), 10)
        self._conn = None

    async def ping(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed:
            return False
        try:
            async with asyncio.timeout(5):
                channel = await conn.channel(publisher_confirms=False)
                try:
                    await channel.declare_queue(DEAD_QUEUE, passive=True)
                finally:
                    await channel.close()
        except Exception:
            return False
        return True

    # ------------------------------------------------------------------ publishing

    async def send(self, msg: Envelope) -> None:
        await self._publish(
            COMMANDS_EXCHANGE, str(partition_of(msg.tenant, self._partitions)), self._encode(msg)
        )

    async def publish(self, msg: Envelope) -> None:
        # No subscriber for an event type is normal: not mandatory.
        await self._publish(EVENTS_EXCHANGE, msg.type, self._encode(msg), mandatory=False)

    async def publish_batch(self, msgs: Sequence[Envelope]) -> None:
        await self.publish(event_batch.pack(msgs))

    async def defer(self, msg: Envelope, delay: float, group: str) -> None:
        # Into the wait queue of the tier, coming back to the group's queue only
        # (CC), exactly as a retried message does.
        queue = f"{EVENT_QUEUE_PREFIX}{group}"
        wait = next((t for t in self._tiers if t >= delay), self._tiers[-1])
        extra = {"CC": [queue], H_QUEUE: queue}
        await self._publish(RETRY_EXCHANGE, tier_name(wait), self._encode(msg, extra))

    async def request(self, msg: Envelope, timeout: float) -> Document:
        reply_to = await self._ensure_reply_queue()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Document] = loop.create_future()
        self._pending[msg.id] = fut
        try:
            await self.send(replace(msg, reply_to=reply_to))
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise RequestTimeout(f"no reply to {msg.type} {msg.id} within {timeout}s") from None
        finally:
            self._pending.pop(msg.id, None)

    def _encode(
        self,
        msg: Envelope,
        extra: Mapping[str, Any] | None = None,
        *,
        persistent: bool = True,
        correlation_id: str | None = None,
    ) -> aio_pika.Message:
        headers: dict[str, Any] = {
            H_ATTEMPT: msg.attempt,
            H_CORRELATION: msg.correlation_id,
            H_CREATED_AT: msg.created_at,
        }
        if msg.tenant is not None:
            headers[H_TENANT] = msg.tenant
        if msg.reply_to is not None:
            headers[H_REPLY_TO] = msg.reply_to
        if msg.headers:
            headers[H_HEADERS] = orjson.dumps(dict(msg.headers)).decode()
        if extra:
            headers.update(extra)
        return aio_pika.Message(
            orjson.dumps(msg.body),
            headers=headers,
            content_type="application/json",
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if persistent
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
            message_id=msg.id,
            correlation_id=correlation_id or msg.correlation_id or None,
            reply_to=msg.reply_to,
            type=msg.type,
        )

    async def _publish(
        self, exchange: str, routing_key: str, message: aio_pika.Message, *, mandatory: bool = True
    ) -> None:
        """Publish until the broker confirms, riding out a broker restart (bounded)."""
        if self._conn is None:
            raise RuntimeError("bus not started")
        ex = self._exchanges[exchange]
        async for attempt in stamina.retry_context(
            on=_retryable,
            attempts=None,
            timeout=self._publish_retry_seconds,
            wait_initial=0.1,
            wait_max=2.0,
        ):
            with attempt:
                if attempt.num > 1:
                    log.warning(
                        "bus.publish_retry exchange=%s key=%s id=%s attempt=%d",
                        exchange,
                        routing_key,
                        message.message_id,
                        attempt.num,
                    )
                await self._publish_once(ex, routing_key, message, mandatory)

    async def _publish_once(
        self, ex: AbstractExchange, routing_key: str, message: aio_pika.Message, mandatory: bool
    ) -> None:
        try:
            # A robust channel waits for the reconnection without any bound: bound it here.
            async with asyncio.timeout(self._publish_timeout):
                await ex.publish(message, routing_key, mandatory=mandatory)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # aiormq cancels pending confirmations when the channel closes under them.
            raise _PublishInterrupted(f"publish of {message.message_id} interrupted") from None

    # ------------------------------------------------------------------ consuming

    async def consume_commands(self, handler: MessageHandler) -> None:
        channel = await self._consumer_channel()
        for n in range(self._partitions):
            # Declared (not just named) on this channel: a robust channel only
            # restores consumers of the queues it declared.
            queue = await self._declare_command_queue(channel, n)
            await self._consume(queue, handler)

    async def consume_events(
        self, group: str, patterns: Sequence[str], handler: MessageHandler
    ) -> None:
        channel = await self._consumer_channel()
        queue = await channel.declare_queue(
            f"{EVENT_QUEUE_PREFIX}{group}", durable=True, arguments=QUORUM
        )
        for pattern in patterns:
            await queue.bind(EVENTS_EXCHANGE, routing_key=pattern)
        await queue.bind(REQUEUE_EXCHANGE, routing_key=queue.name)
        await self._consume(queue, handler)

    async def _consumer_channel(self) -> AbstractRobustChannel:
        if self._conn is None:
            raise RuntimeError("bus not started")
        channel = await self._conn.channel(publisher_confirms=False)
        assert isinstance(channel, AbstractRobustChannel)
        await channel.set_qos(prefetch_count=self._prefetch)
        self._channels.append(channel)
        return channel

    async def _consume(self, queue: AbstractQueue, handler: MessageHandler) -> None:
        name = queue.name

        async def on_message(message: AbstractIncomingMessage) -> None:
            await self._on_message(name, handler, message)

        tag = await queue.consume(on_message, no_ack=False)
        self._consumers.append((queue, tag))
        self._consumed.add(name)

    async def _on_message(
        self, queue: str, handler: MessageHandler, message: AbstractIncomingMessage
    ) -> None:
        # Deliveries start in the order the broker sent them; everything up to the
        # first await runs before the next delivery, so the tenant's chain is in order.
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        env, error = self._decode(message)
        key = (queue, env.tenant)
        prev = self._tails.get(key)
        done = asyncio.Event()
        self._tails[key] = done
        try:
            if prev is not None:
                await prev.wait()
            if self._closing:
                return  # unacked: back to the queue when the connection closes
            if error is not None:
                await self._settle(message, self._dead(queue, env, error))
                return
            await self._process(queue, handler, message, env, done.set)
        finally:
            done.set()
            if self._tails.get(key) is done:
                del self._tails[key]
            if task is not None:
                self._inflight.discard(task)

    async def _process(
        self,
        queue: str,
        handler: MessageHandler,
        message: AbstractIncomingMessage,
        env: Envelope,
        release: Callable[[], None] = lambda: None,
    ) -> None:
        """``release`` lets the tenant's next message start once the handler is done: the
        changes are ordered, the reply and the ack need not be (a redelivery is deduped)."""
        if event_batch.is_batch(env):
            await self._process_batch(queue, handler, message, env, release)
            return
        try:
            forward, result = await self._handle_one(queue, handler, env, message)
        finally:
            release()
        if forward is not None:
            await self._settle(message, forward)
            return
        if env.reply_to:
            try:
                await self._reply(env, result)
            except Exception:
                log.exception("bus.reply_failed id=%s", env.id)
        await self._ack(message)

    async def _handle_one(
        self,
        queue: str,
        handler: MessageHandler,
        env: Envelope,
        message: AbstractIncomingMessage,
        index: int | None = None,
    ) -> tuple[Awaitable[None] | None, Document | None]:
        """Run the handler: ``(retry or dead-letter copy to publish, None)`` or
        ``(None, the handler's result)``.

        The copy is made from the message as it was delivered (decoded again; the
        ``index``-th event of a batch), not from ``env``: a handler may have changed
        its envelope before it failed, and the retry must be the message as it was
        sent (the embedded bus's contract too). Decoding again costs only on failure.
        """
        try:
            return None, await handler(env)
        except Retry as exc:
            copy = self._as_delivered(message, index)
            return self._retry(queue, copy, str(exc) or "retry", exc.delay), None
        except Reject as exc:
            return self._dead(queue, self._as_delivered(message, index), f"rejected: {exc}"), None
        except Exception as exc:
            log.exception("bus.handler_failed queue=%s id=%s type=%s", queue, env.id, env.type)
            copy = self._as_delivered(message, index)
            return self._retry(queue, copy, f"{type(exc).__name__}: {exc}"), None

    async def _process_batch(
        self,
        queue: str,
        handler: MessageHandler,
        message: AbstractIncomingMessage,
        env: Envelope,
        release: Callable[[], None],
    ) -> None:
        """The events of a batch one by one (``MessageBus.publish_batch``), then one ack.

        A failed event's retry or dead-letter copy is that event alone, published
        before the next event starts. Stopped half way (closing, or a copy that
        could not be published), the batch is not acked: it comes again whole.
        """
        try:
            try:
                events = event_batch.unpack(env)
            except (KeyError, TypeError, ValueError) as exc:
                await self._settle(message, self._dead(queue, env, f"undecodable batch: {exc}"))
                return
            for i, one in enumerate(events):
                if self._closing:
                    return  # unacked: back to the queue when the connection closes
                forward, _ = await self._handle_one(queue, handler, one, message, i)
                if forward is not None:
                    try:
                        await forward
                    except Exception:
                        log.exception("bus.forward_failed id=%s", one.id)
                        with contextlib.suppress(Exception):
                            await message.nack(requeue=True)
                        return
        finally:
            release()
        await self._ack(message)

    def _as_delivered(self, message: AbstractIncomingMessage, i: int | None) -> Envelope:
        """The message as it was delivered (decoded again), or the ``i``-th event of it
        when it is a batch."""
        env = self._decode(message)[0]
        return env if i is None else event_batch.unpack(env)[i]

    async def _settle(self, message: AbstractIncomingMessage, forward: Awaitable[None]) -> None:
        """Publish the retry or dead copy, then ack; if the copy failed, requeue instead."""
        try:
            await forward
        except Exception:
            log.exception("bus.forward_failed id=%s", message.message_id)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        await self._ack(message)

    async def _ack(self, message: AbstractIncomingMessage) -> None:
        try:
            await message.ack()
        except Exception as exc:
            # The delivery channel died (broker restart): the broker redelivers it.
            log.warning("bus.ack_failed id=%s error=%r", message.message_id, exc)

    async def _retry(
        self, queue: str, env: Envelope, reason: str, delay: float | None = None
    ) -> None:
        if env.attempt >= len(self._delays):
            await self._dead(queue, env, f"retries exhausted: {reason}")
            return
        if delay is None:
            wait = self._delays[env.attempt]
        else:
            wait = next((t for t in self._tiers if t >= delay), self._tiers[-1])
        copy = replace(env, attempt=env.attempt + 1)
        # Routed into the wait queue by its tier; CC names the queue to come back to.
        extra = {"CC": [queue], H_QUEUE: queue}
        await self._publish(RETRY_EXCHANGE, tier_name(wait), self._encode(copy, extra))

    async def _dead(self, queue: str, env: Envelope, reason: str) -> None:
        log.warning("bus.dead_letter queue=%s id=%s reason=%s", queue, env.id, reason)
        copy = replace(env, headers={**env.headers, DEAD_REASON: reason, DEAD_QUEUE_HEADER: queue})
        await self._publish(DEAD_EXCHANGE, queue, self._encode(copy, {H_QUEUE: queue}))

    async def _reply(self, env: Envelope, result: Document | None) -> None:
        assert env.reply_to is not None
        reply = Envelope(
            id=uuid.uuid4().hex,
            type=f"{env.type}.reply",
            body=result or {},
            tenant=env.tenant,
            correlation_id=env.correlation_id,
        )
        message = self._encode(
            reply, {H_IN_REPLY_TO: env.id}, persistent=False, correlation_id=env.id
        )
        # The requester may be gone (its reply queue with it): not mandatory.
        await self._publish("", env.reply_to, message, mandatory=False)

    async def _ensure_reply_queue(self) -> str:
        if self._reply_queue is not None:
            return self._reply_queue
        async with self._reply_lock:
            if self._reply_queue is None:
                if self._conn is None:
                    raise RuntimeError("bus not started")
                channel = await self._conn.channel(publisher_confirms=False)
                assert isinstance(channel, AbstractRobustChannel)
                self._channels.append(channel)
                queue = await channel.declare_queue(
                    f"{REPLY_QUEUE_PREFIX}{self.instance_id}", exclusive=True, auto_delete=True
                )
                await queue.consume(self._on_reply, no_ack=True)
                self._reply_queue = queue.name
        return self._reply_queue

    def _on_connection_lost(self, _sender: Any, exc: BaseException | None = None) -> None:
        """Fail the requests waiting for a reply now: their reply queue is gone (an
        exclusive queue dies with its connection; the reconnection declares a new one),
        so the API answers 503 at once instead of after the whole timeout."""
        if not self._pending:
            return
        log.warning("bus.replies_lost pending=%d error=%r", len(self._pending), exc)
        for msg_id, fut in list(self._pending.items()):
            if not fut.done():
                fut.set_exception(
                    ReplyLost(f"the connection to the broker was lost: no reply to {msg_id}")
                )

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        key = message.correlation_id or _text((message.headers or {}).get(H_IN_REPLY_TO))
        fut = self._pending.get(key or "")
        if fut is None or fut.done():
            return  # a late or duplicate reply
        try:
            body = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            body = {"_raw": message.body.decode(errors="replace")}
        fut.set_result(body)

    def _decode(self, message: AbstractIncomingMessage) -> tuple[Envelope, str | None]:
        """The envelope and, when the message cannot be read, why (it is dead-lettered)."""
        h = message.headers or {}
        error: str | None = None
        try:
            body = orjson.loads(message.body)
            if not isinstance(body, dict):
                raise ValueError("body is not a JSON object")
        except ValueError as exc:
            error = f"undecodable body: {exc}"
            body = {"_raw": message.body.decode(errors="replace")}
        headers: dict[str, Any] = {}
        raw_headers = _text(h.get(H_HEADERS))
        if raw_headers:
            try:
                headers = orjson.loads(raw_headers)
            except orjson.JSONDecodeError:
                headers = {"_raw": raw_headers}
        attempt = h.get(H_ATTEMPT, 0)
        env = Envelope(
            id=message.message_id or uuid.uuid4().hex,
            type=message.type or "",
            body=body,
            tenant=_text(h.get(H_TENANT)),
            correlation_id=_text(h.get(H_CORRELATION)) or message.correlation_id or "",
            attempt=attempt if isinstance(attempt, int) else 0,
            reply_to=_text(h.get(H_REPLY_TO)) or message.reply_to,
            created_at=_text(h.get(H_CREATED_AT)) or "",
            headers=headers,
        )
        return env, error

    # ------------------------------------------------------------------ inspection

    async def dead_letters(self, limit: int = 100) -> list[Envelope]:
        if self._conn is None:
            raise RuntimeError("bus not started")
        out: list[Envelope] = []
        channel = await self._conn.channel(publisher_confirms=False)
        try:
            queue = await channel.get_queue(DEAD_QUEUE, ensure=False)
            while len(out) < limit:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                out.append(self._decode(message)[0])
                await message.ack()
        finally:
            await channel.close()
        return out

    async def queue_depths(self) -> dict[str, int]:
        """Ready messages per queue of the topology (for metrics)."""
        if self._conn is None:
            raise RuntimeError("bus not started")
        names = [f"{COMMAND_QUEUE_PREFIX}{n}" for n in range(self._partitions)]
        names += [f"{RETRY_QUEUE_PREFIX}{tier_name(d)}" for d in self._tiers]
        names += sorted(n for n in self._consumed if n.startswith(EVENT_QUEUE_PREFIX))
        names.append(DEAD_QUEUE)
        depths: dict[str, int] = {}
        channel = await self._conn.channel(publisher_confirms=False)
        try:
            for name in names:
                queue = await channel.declare_queue(name, passive=True)
                depths[name] = queue.declaration_result.message_count or 0
        finally:
            await channel.close()
        return depths
