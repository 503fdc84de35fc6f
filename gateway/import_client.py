"""``cer-gateway import``: feed a provider's files to the gateway's import job (R-SCHED-5).

The client side of ``gateway.http.imports``. It reads FHIR NDJSON files (one
resource per line) and Bundle files (their entries, streamed with ijson),
cuts them into chunks of ``chunk_size`` resources and sends them in order,
``in_flight`` at a time (the gateway validates the next chunk while it applies
the previous one), to one job. Memory stays constant: a file is never read
whole, only the chunks in flight are held.

Resuming: a local state file (``--state``, by default
``.cer-import-<hash of the inputs and URL>.json`` in the working directory)
names the job and the last chunk the gateway confirmed. Run the same command
again after a crash or Ctrl-C and it asks the job where it stopped (the job's
checkpoint in the gateway's store is the authority; the local one is shown
beside it) and goes on from there. The state file is removed when the job
completes, so running the command once more starts a new job, which finds
everything unchanged.

Files are applied in the order their first resource needs: Locations, then
Schedules, Slots, Appointments (a Bundle counts as Locations); ties keep the
command line's order, a directory's files by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import aiohttp
import orjson

NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".ndjson.gz")
RANK = {"Bundle": 0, "Location": 0, "Schedule": 1, "Slot": 2, "Appointment": 3}
NDJSON = "application/fhir+ndjson"
MAX_CHUNK_BYTES = 8 * 1024 * 1024  # stays under the gateway's default 10 MB body limit
RETRIES = 6


class ImportFailed(Exception):
    """The import cannot go on (refused, or the gateway stays unreachable)."""


@dataclass(frozen=True)
class Options:
    url: str
    paths: tuple[str, ...]
    token: str | None = None
    client_id: str | None = None
    key_file: str | None = None
    chunk_size: int = 1000
    in_flight: int = 2
    state_file: str | None = None
    errors_file: str = "import-errors.ndjson"
    restart: bool = False
    label: str = ""
    progress: str = "auto"  # auto | bar | plain | none


@dataclass(frozen=True)
class Source:
    path: Path
    format: str  # ndjson | bundle
    rank: int
    size: int


@dataclass
class Chunk:
    seq: int
    source_index: int
    first: int
    last: int
    body: bytes
    lines: int
    nbytes: int  # bytes of the file this chunk covers (progress)


# --------------------------------------------------------------------------- inputs


def discover(paths: tuple[str, ...]) -> list[Source]:
    """The files to import, in the order they must be applied."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if f.is_file() and (f.name.endswith(NDJSON_SUFFIXES) or f.suffix == ".json")
            )
            if not found:
                raise ImportFailed(f"{p}: no .ndjson, .jsonl or .json files in it")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise ImportFailed(f"{p}: no such file or directory")
    sources = [sniff(f) for f in files]
    # Stable: ties keep the given order.
    return sorted(sources, key=lambda s: s.rank)


def sniff(path: Path) -> Source:
    """NDJSON or a Bundle, and the type of its first resource (its rank)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.readline(1024 * 1024)
        while head and not head.strip():
            head = f.readline(1024 * 1024)
    try:
        first = orjson.loads(head) if head.strip() else None
    except orjson.JSONDecodeError:
        first = None  # a pretty-printed JSON document: its first line is not a whole object
    if isinstance(first, dict) and first.get("resourceType") != "Bundle":
        rtype = first.get("resourceType")
        return Source(path, "ndjson", RANK.get(str(rtype), 9), size)
    if path.name.endswith(NDJSON_SUFFIXES) and first is not None:
        return Source(path, "ndjson", 9, size)
    return Source(path, "bundle", RANK["Bundle"], size)


def ndjson_lines(path: Path, after: int) -> Iterator[tuple[int, bytes, int]]:
    """``(line number, line, bytes)`` from line ``after + 1`` on; skipped ones count bytes."""
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            if n <= after:
                yield n, b"", len(line)  # skipped: only its bytes count for the progress
                continue
            yield n, line.rstrip(b"\r\n"), len(line)


def bundle_entries(path: Path, after: int) -> Iterator[tuple[int, bytes, int]]:
    """``(entry index, {"fullUrl", "resource"} line, bytes)`` of a Bundle, streamed."""
    import ijson

    with path.open("rb") as f:
        kind = None
        for prefix, event, value in ijson.parse(f):
            if prefix == "resourceType" and event == "string":
                kind = value
                break
            if prefix == "" and event == "end_map":
                break
    if kind != "Bundle":
        raise ImportFailed(f"{path}: neither NDJSON nor a FHIR Bundle (resourceType {kind!r})")
    size = path.stat().st_size
    with path.open("rb") as f:
        last_pos = 0
        for n, entry in enumerate(ijson.items(f, "entry.item", use_float=True)):
            pos = f.tell()
            step, last_pos = max(pos - last_pos, 0), pos
            if n <= after:
                yield n, b"", step
                continue
            if not isinstance(entry, dict):
                entry = {"resource": None}
            line = orjson.dumps(
                {"fullUrl": entry.get("fullUrl"), "resource": entry.get("resource")}
            )
            yield n, line, step
        if size > last_pos:
            yield -1, b"", size - last_pos  # the rest of the file: progress only


def chunks(
    sources: list[Source], start: tuple[int, int] | None, size: int, first_seq: int
) -> Iterator[Chunk]:
    """The chunks from ``start`` (source index, last position applied) on."""
    seq = first_seq
    for i, src in enumerate(sources):
        if start is not None and i < start[0]:
            continue
        after = (
            start[1]
            if start is not None and i == start[0]
            else (0 if src.format == "ndjson" else -1)
        )
        reader = ndjson_lines if src.format == "ndjson" else bundle_entries
        lines: list[bytes] = []
        first = -1
        nbytes = 0
        body_bytes = 0
        count = 0
        last = after
        for pos, line, step in reader(src.path, after):
            nbytes += step
            if pos < 0 or pos <= after:
                continue
            if first < 0:
                first = pos
            lines.append(line)
            last = pos
            body_bytes += len(line) + 1
            if line.strip():
                count += 1
            if count >= size or body_bytes >= MAX_CHUNK_BYTES:
                yield Chunk(seq, i, first, last, b"\n".join(lines) + b"\n", count, nbytes)
                seq += 1
                lines, first, nbytes, body_bytes, count = [], -1, 0, 0, 0
        if lines or nbytes:
            if lines:
                yield Chunk(seq, i, first, last, b"\n".join(lines) + b"\n", count, nbytes)
                seq += 1
            else:
                yield Chunk(0, i, last, last, b"", 0, nbytes)  # progress only, not sent


# --------------------------------------------------------------------------- state


def fingerprint(url: str, sources: list[Source]) -> str:
    h = hashlib.sha256(url.rstrip("/").encode())
    for s in sources:
        st = s.path.stat()
        h.update(f"{s.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def load_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_text(path: str) -> str:
    return Path(path).read_text()


def forget_state(path: Path) -> None:
    """The job completed: the next run of the command is a new import."""
    with contextlib.suppress(OSError):
        path.unlink()


def save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)  # atomic: a kill never leaves half a state file


# --------------------------------------------------------------------------- progress


@dataclass
class Progress:
    """A tqdm bar on a terminal; plain lines every few seconds otherwise (logs, CI)."""

    mode: str
    total_bytes: int
    out: IO[str] = field(default_factory=lambda: sys.stderr)
    bar: Any = None
    last_line: float = 0.0
    started: float = field(default_factory=time.monotonic)
    read_this_run: int = 0

    def __post_init__(self) -> None:
        if self.mode == "auto":
            self.mode = "bar" if self.out.isatty() else "plain"
        if self.mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total_bytes,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=self.out,
                dynamic_ncols=True,
            )

    def skip(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)

    def advance(self, nbytes: int, lines: int, counts: dict[str, int], file: str) -> None:
        self.read_this_run += lines
        rate = self.read_this_run / max(time.monotonic() - self.started, 1e-9)
        if self.bar is not None:
            self.bar.set_description(Path(file).name[:30], refresh=False)
            self.bar.set_postfix_str(
                f"{counts.get('read', 0):,} read, {counts.get('created', 0):,} created, "
                f"{counts.get('unchanged', 0):,} unchanged, {counts.get('rejected', 0):,} "
                f"rejected, {rate:,.0f}/s",
                refresh=False,
            )
            self.bar.update(nbytes)
            return
        if self.mode == "plain" and time.monotonic() - self.last_line >= 5.0:
            self.last_line = time.monotonic()
            print(
                f"import: {counts.get('read', 0)} read, {counts.get('created', 0)} created, "
                f"{counts.get('updated', 0)} updated, {counts.get('unchanged', 0)} unchanged, "
                f"{counts.get('rejected', 0)} rejected; {rate:.0f} resources/s; {file}",
                file=self.out,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the run


class Gateway:
    """The HTTP calls, with the token (refreshed once on a 401 when a key is given)."""

    def __init__(self, session: aiohttp.ClientSession, opts: Options) -> None:
        self.session = session
        self.opts = opts
        self.base = opts.url.rstrip("/")
        self.token = opts.token

    async def authorize(self) -> None:
        if self.token is None:
            self.token = await fetch_token(self.session, self.base, self.opts)

    def headers(self, content_type: str | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}", "Accept": "application/fhir+json"}
        if content_type:
            h["Content-Type"] = content_type
        return h

    async def call(
        self, method: str, url: str, body: bytes | None = None, content_type: str | None = None
    ) -> tuple[int, Any]:
        for attempt in range(RETRIES):
            try:
                async with self.session.request(
                    method, url, data=body, headers=self.headers(content_type)
                ) as resp:
                    raw = await resp.read()
                    if resp.status == 401 and self.opts.key_file and attempt == 0:
                        self.token = await fetch_token(self.session, self.base, self.opts)
                        continue
                    if resp.status in (502, 503, 504) and attempt < RETRIES - 1:
                        await asyncio.sleep(min(2**attempt, 16))
                        continue
                    return resp.status, (orjson.loads(raw) if raw.strip() else None)
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                if attempt == RETRIES - 1:
                    raise ImportFailed(
                        f"the gateway at {self.base} does not answer: {exc!r}"
                    ) from exc
                await asyncio.sleep(min(2**attempt, 16))
        raise ImportFailed(f"{method} {url}: no answer after {RETRIES} tries")


async def fetch_token(session: aiohttp.ClientSession, base: str, opts: Options) -> str:
    """An access token from a client assertion signed with the provider's key (RFC 7523)."""
    from gateway.auth import make_client_assertion

    if not (opts.client_id and opts.key_file):
        raise ImportFailed("give --token, or --client-id and --key")
    url = f"{base}/auth/token"
    assertion = make_client_assertion(
        read_text(opts.key_file), opts.client_id, url, datetime.now(UTC)
    )
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    async with session.post(url, data=form) as resp:
        body = await resp.json(content_type=None)
        if resp.status != 200:
            raise ImportFailed(f"no token: {resp.status} {body}")
        return str(body["access_token"])


def outcome_text(body: Any) -> str:
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        return "; ".join(str(i.get("diagnostics", "")) for i in body.get("issue", []))
    return str(body)


async def run(opts: Options) -> int:
    """Import; 0 when everything was applied, 2 when some resources were rejected."""
    sources = discover(opts.paths)
    fp = fingerprint(opts.url, sources)
    state_path = Path(opts.state_file or f".cer-import-{fp}.json")
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        gw = Gateway(session, opts)
        await gw.authorize()
        job, start = await open_job(gw, opts, state_path, fp, sources)
        state = {
            "fingerprint": fp,
            "url": opts.url.rstrip("/"),
            "job": job["id"],
            "status_url": job["request"],
            "files": [str(s.path) for s in sources],
            "checkpoint": None,
        }
        save_state(state_path, state)
        started = time.monotonic()
        progress = Progress(opts.progress, sum(s.size for s in sources))
        try:
            await send_all(gw, opts, job, sources, start, state, state_path, progress)
        finally:
            progress.close()
        status, body = await gw.call("POST", job["request"] + "/$complete")
        if status != 200:
            raise ImportFailed(f"completing the import failed: {status} {outcome_text(body)}")
        elapsed = time.monotonic() - started
        final = body["counts"]
        await write_errors(gw, job["request"] + "/errors", Path(opts.errors_file))
        forget_state(state_path)
        print(summary(body, final, elapsed, progress.read_this_run, sources, opts.errors_file))
        return 2 if final.get("rejected") else 0


async def open_job(
    gw: Gateway, opts: Options, state_path: Path, fp: str, sources: list[Source]
) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """Resume the job of the state file if it can go on, else start one."""
    old = None if opts.restart else load_state(state_path)
    if old and old.get("fingerprint") == fp and old.get("status_url"):
        status, body = await gw.call("GET", old["status_url"])
        resumable = status in (200, 202) and (
            body["status"] == "in-progress"
            or (body["status"] == "failed" and str(body.get("reason") or "").startswith("stale"))
        )
        if resumable:
            cp = body.get("checkpoint")
            start = (int(cp["file"].lstrip("f")), int(cp["position"])) if cp else None
            local = old.get("checkpoint")
            where = (
                f"{sources[start[0]].path.name} after position {start[1]}" if start else "the start"
            )
            say(
                f"resuming import {body['id']} at {where} (chunk {body['chunks'] + 1}; "
                f"local checkpoint: {local or 'none'})"
            )
            return body, start
        if status == 404:
            say("the gateway no longer knows the previous import: starting a new one")
        elif status in (200, 202):
            say(f"the previous import is {body['status']}: starting a new one")
    payload = orjson.dumps({"label": opts.label or ", ".join(s.path.name for s in sources)[:200]})
    status, body = await gw.call("POST", f"{gw.base}/fhir/$import", payload, "application/json")
    if status != 202:
        raise ImportFailed(
            f"the gateway refused to start the import: {status} {outcome_text(body)}"
        )
    say(f"import {body['id']} started; status: {body['request']}")
    return body, None


async def send_all(
    gw: Gateway,
    opts: Options,
    job: dict[str, Any],
    sources: list[Source],
    start: tuple[int, int] | None,
    state: dict[str, Any],
    state_path: Path,
    progress: Progress,
) -> None:
    """Send the chunks in order, ``in_flight`` at a time."""
    if start is not None:
        # What was applied before this run only moves the bar.
        for i in range(start[0]):
            progress.skip(sources[i].size)
    pending: deque[tuple[Chunk, asyncio.Task[tuple[int, Any]]]] = deque()
    url = job["request"]

    async def settle() -> None:
        chunk_, task = pending.popleft()
        status, body = await task
        src = sources[chunk_.source_index]
        if status != 200:
            raise ImportFailed(
                f"chunk {chunk_.seq} ({src.path.name}, from position {chunk_.first}) was "
                f"refused: {status} {outcome_text(body)}"
            )
        counts = body["job"]["counts"]
        state["checkpoint"] = {
            "file": str(src.path),
            "position": chunk_.last,
            "seq": chunk_.seq,
        }
        save_state(state_path, state)
        progress.advance(chunk_.nbytes, chunk_.lines, counts, src.path.name)

    first_seq = int(job.get("chunks") or 0) + 1
    try:
        await send_in_order(gw, opts, url, sources, start, first_seq, pending, settle, progress)
    finally:
        for _, task in pending:  # refused or interrupted: the chunks behind it are not sent
            task.cancel()


async def send_in_order(
    gw: Gateway,
    opts: Options,
    url: str,
    sources: list[Source],
    start: tuple[int, int] | None,
    first_seq: int,
    pending: deque[tuple[Chunk, asyncio.Task[tuple[int, Any]]]],
    settle: Callable[[], Awaitable[None]],
    progress: Progress,
) -> None:
    for ch in chunks(sources, start, opts.chunk_size, first_seq):
        if not ch.body:
            progress.skip(ch.nbytes)
            continue
        src = sources[ch.source_index]
        query = (
            f"?seq={ch.seq}&file_index={ch.source_index}&first={ch.first}"
            f"&format={src.format}&file={quote(src.path.name)}"
        )
        pending.append((ch, asyncio.create_task(send_chunk(gw, url + query, ch.body))))
        while len(pending) >= max(opts.in_flight, 1):
            await settle()
    while pending:
        await settle()


async def send_chunk(gw: Gateway, url: str, body: bytes) -> tuple[int, Any]:
    for _ in range(40):
        status, reply = await gw.call("POST", url, body, NDJSON)
        if status == 409 and isinstance(reply, dict) and "before chunk" in outcome_text(reply):
            await asyncio.sleep(0.5)  # an earlier chunk is still on its way: wait for it
            continue
        return status, reply
    return status, reply


async def write_errors(gw: Gateway, url: str, path: Path) -> None:
    """The job's error file, copied as it streams (one OperationOutcome per line)."""
    async with gw.session.get(url, headers=gw.headers()) as resp:
        if resp.status != 200:
            raise ImportFailed(f"the error file could not be read: {resp.status}")
        with path.open("wb") as out:
            async for block in resp.content.iter_chunked(1 << 16):
                out.write(block)


def summary(
    body: dict[str, Any],
    counts: dict[str, int],
    elapsed: float,
    read_this_run: int,
    sources: list[Source],
    errors_file: str,
) -> str:
    minutes, seconds = divmod(elapsed, 60)
    rate = read_this_run / elapsed if elapsed > 0 else 0.0
    rejected = counts.get("rejected", 0)
    lines = [
        f"Import {body['id']}: {body['status']}",
        f"  files      {len(sources)}",
        f"  read       {counts.get('read', 0):,}",
        f"  created    {counts.get('created', 0):,}",
        f"  updated    {counts.get('updated', 0):,}",
        f"  unchanged  {counts.get('unchanged', 0):,}",
        f"  rejected   {rejected:,}" + (f"  (why: {errors_file})" if rejected else ""),
        f"  time       {int(minutes)} min {seconds:.1f} s (this run)",
        f"  rate       {rate:,.0f} resources/s ({read_this_run:,} read in this run)",
    ]
    return "\n".join(lines)


def main(opts: Options) -> int:
    try:
        return asyncio.run(run(opts))
    except ImportFailed as exc:
        say(f"import failed: {exc}")
        say("run the same command again to resume from the last confirmed chunk")
        return 1
    except KeyboardInterrupt:
        say("interrupted: run the same command again to resume from the last confirmed chunk")
        return 130
