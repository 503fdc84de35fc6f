"""``cer-gateway report`` and ``cer-gateway reconcile``: the reports from the command line.

They call the gateway's HTTP API (``/reports/...``) with the caller's token:
``--token``, or ``--client-id`` and ``--key`` as ``cer-gateway token`` takes
them (a provider's or the payer's client). They print a readable table and
can write the JSON and CSV the API gives (``--json FILE``, ``--csv FILE``).
``reconcile`` exits 0 when the export and the gateway match, 1 when they
differ, 2 when it could not compare. It sends the export a week of visits at
a time (each row with its original line number), so an export of any size
is compared with the server holding one week of both sides.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from gateway import reconciliation as rec
from gateway import reports
from gateway.timeutil import warsaw_day

TIMEOUT = 600  # seconds: a report over a large provider is read in one request


class CliError(Exception):
    pass


def add_parsers(sub: Any) -> None:
    rep = sub.add_parser(
        "report", help="read a report (activity, compliance) as a table, CSV or JSON"
    )
    rep.add_argument("kind", choices=("activity", "compliance"))
    _auth_options(rep)
    rep.add_argument("--from", dest="first", help="first day, YYYY-MM-DD (default: 6 days ago)")
    rep.add_argument("--to", dest="last", help="last day, YYYY-MM-DD (default: today)")
    rep.add_argument("--provider", help="provider id(s), comma-separated (the payer: default all)")
    _output_options(rep)
    recon = sub.add_parser(
        "reconcile",
        help="compare an AP-KOLCE-style CSV of booked visits with the gateway (1: differences)",
    )
    recon.add_argument("file", help="the provider's export (docs/reconciliation.md)")
    _auth_options(recon)
    recon.add_argument("--from", dest="first", help="first day (default: the export's first)")
    recon.add_argument("--to", dest="last", help="last day (default: the export's last)")
    _output_options(recon)


def _auth_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's base URL")
    p.add_argument("--token", help="an access token (else --client-id and --key)")
    p.add_argument("--client-id")
    p.add_argument("--key", help="file with the client's private key (PEM)")


def _output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", dest="json_out", help="also write the JSON report to this file")
    p.add_argument("--csv", dest="csv_out", help="also write the CSV report to this file")
    p.add_argument(
        "--sep", choices=("comma", "semicolon"), default="comma", help="the CSV's delimiter"
    )


def run(args: argparse.Namespace) -> int:
    try:
        token = _token(args)
        if args.command == "reconcile":
            return _reconcile(args, token)
        return _report(args, token)
    except CliError as err:
        print(f"cer-gateway {args.command}: {err}", file=sys.stderr)
        return 2


def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    if not (args.client_id and args.key):
        raise CliError("give --token, or --client-id and --key")
    from gateway.auth import make_client_assertion

    url = args.url.rstrip("/") + "/auth/token"
    assertion = make_client_assertion(
        Path(args.key).read_text(), args.client_id, url, datetime.now(UTC)
    )
    data = urllib.parse.urlencode(
        {
            "grant_type": "client_credentials",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        }
    ).encode()
    body = _call(urllib.request.Request(url, data=data))
    return str(json.loads(body)["access_token"])


def _call(req: urllib.request.Request) -> bytes:
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            data: bytes = resp.read()
            return data
    except urllib.error.HTTPError as err:
        detail = err.read().decode(errors="replace")
        raise CliError(f"{err.code} from {req.full_url}: {detail}") from None
    except urllib.error.URLError as err:
        raise CliError(f"cannot reach {req.full_url}: {err.reason}") from None


def _get(
    args: argparse.Namespace,
    token: str,
    path: str,
    query: dict[str, str],
    accept: str,
    body: bytes | None = None,
) -> bytes:
    q = urllib.parse.urlencode({k: v for k, v in query.items() if v})
    url = f"{args.url.rstrip('/')}{path}" + (f"?{q}" if q else "")
    headers = {"Authorization": f"Bearer {token}", "Accept": accept}
    if body is not None:
        headers["Content-Type"] = "text/csv"
    return _call(urllib.request.Request(url, data=body, headers=headers))


def _fetch(
    args: argparse.Namespace,
    token: str,
    path: str,
    query: dict[str, str],
    body: bytes | None = None,
) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(_get(args, token, path, query, "application/json", body))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    if args.csv_out:
        csv_q = {**query, "format": "csv", "sep": args.sep}
        Path(args.csv_out).write_bytes(_get(args, token, path, csv_q, "text/csv", body))
    return report


@dataclass
class Parts:
    """The export split by week of the visit (Monday to Sunday, Warsaw days)."""

    header: list[str]
    first: date | None = None
    last: date | None = None
    weeks: dict[date, list[list[str]]] = field(default_factory=dict)
    unreadable: list[list[str]] = field(
        default_factory=list
    )  # no usable start: the server says why


def split_export(path: Path) -> Parts:
    """Read the export (UTF-8, else Windows-1250) and sort its rows into weeks, each row
    with its original line number (the server's messages name it)."""
    try:
        return _split(path, "utf-8-sig")
    except UnicodeDecodeError:
        return _split(path, "cp1250")


def _split(path: Path, encoding: str) -> Parts:
    with path.open(encoding=encoding, newline="") as f:
        head = ""
        for head in f:
            if head.strip():
                break
        f.seek(0)
        reader = csv.reader(f, delimiter=rec.delimiter_of(head))
        header = next((r for r in reader if any(c.strip() for c in r)), None)
        if header is None:
            raise CliError(f"{path} is empty: a header row is required")
        try:
            cols = rec.columns(header)
        except rec.ExportError as err:
            raise CliError(str(err)) from None
        parts = Parts(header=[*header, "line"] if "line" not in cols else header)
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if "line" not in cols:
                row = [*row, str(reader.line_num)]
            try:
                day = warsaw_day(rec.parse_start(row[cols["start"]]))
            except (ValueError, IndexError):
                parts.unreadable.append(row)
                continue
            week = day - timedelta(days=day.weekday())
            parts.weeks.setdefault(week, []).append(row)
            parts.first = day if parts.first is None or day < parts.first else parts.first
            parts.last = day if parts.last is None or day > parts.last else parts.last
    return parts


def _csv_bytes(header: list[str], rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=";", lineterminator="\r\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def merge(results: list[dict[str, Any]], first: date | None, last: date | None) -> dict[str, Any]:
    """One answer from the answers for each week."""
    out = dict(results[0])
    out["from"] = first.isoformat() if first else results[0].get("from")
    out["to"] = last.isoformat() if last else results[-1].get("to")
    out["matches"] = all(r["matches"] for r in results)
    out["totals"] = {k: sum(r["totals"][k] for r in results) for k in results[0]["totals"]}
    out["days"] = sorted(
        (d for r in results for d in r["days"]), key=lambda d: (d["scope"], d["day"])
    )
    for name in ("rejected_rows", "unmatched_rows"):
        out[name] = sorted((x for r in results for x in r.get(name, [])), key=lambda x: x["line"])
    out["rejected_count"] = sum(r.get("rejected_count", 0) for r in results)
    return out


def _reconcile(args: argparse.Namespace, token: str) -> int:
    try:
        parts = split_export(Path(args.file))
    except OSError as err:
        raise CliError(f"cannot read {args.file}: {err.strerror}") from None
    first = date.fromisoformat(args.first) if args.first else parts.first
    last = date.fromisoformat(args.last) if args.last else parts.last
    results = []
    if first is None or last is None:
        # nothing with a readable date: the server names each bad row
        body = _csv_bytes(parts.header, parts.unreadable)
        results.append(_post_part(args, token, body, {}))
    else:
        # A week at a time: the server holds one week of both sides, not the whole export.
        week = first - timedelta(days=first.weekday())
        weeks = []
        while week <= last:
            weeks.append(week)
            week += timedelta(days=7)
        for i, week in enumerate(weeks):
            rows = parts.weeks.get(week, [])
            if i == 0:
                rows = parts.unreadable + rows
            lo, hi = max(week, first), min(week + timedelta(days=6), last)
            if len(weeks) > 1:
                print(f"week {i + 1}/{len(weeks)}: {lo} .. {hi}, {len(rows)} rows", file=sys.stderr)
            query = {"from": lo.isoformat(), "to": hi.isoformat()}
            results.append(_post_part(args, token, _csv_bytes(parts.header, rows), query))
    result = merge(results, first, last)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n")
    if args.csv_out:
        sep = ";" if args.sep == "semicolon" else ","
        Path(args.csv_out).write_text(
            reports.to_csv(rec.csv_rows(result), rec.CSV_COLUMNS, sep), encoding="utf-8"
        )
    sys.stdout.write(rec.summary(result))
    return 0 if result["matches"] else 1


def _post_part(
    args: argparse.Namespace, token: str, body: bytes, query: dict[str, str]
) -> dict[str, Any]:
    data = _get(args, token, "/reports/reconciliation", query, "application/json", body)
    result: dict[str, Any] = json.loads(data)
    return result


def _report(args: argparse.Namespace, token: str) -> int:
    query = {"from": args.first or "", "to": args.last or "", "provider": args.provider or ""}
    if args.kind == "compliance":
        query = {"provider": args.provider or ""}
    report = _fetch(args, token, f"/reports/{args.kind}", query)
    sys.stdout.write(
        activity_table(report) if args.kind == "activity" else compliance_table(report)
    )
    return 0


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(out) + "\n"


def activity_table(report: dict[str, Any]) -> str:
    rows = []
    for r in report["rows"]:
        slots = r["slots"].values()
        canc = r["cancellations"]["by_channel"]
        groups = r["bookings"]["by_group"]
        rows.append(
            [
                r["provider"],
                r["scope"],
                r["day"],
                sum(s.get("free", 0) for s in slots),
                sum(s.get("booked", 0) for s in slots),
                r["bookings"]["total"],
                groups["central"],
                groups["facility"],
                groups["import"],
                r["cancellations"]["total"],
                canc.get("sms", 0),
                canc.get("portal", 0),
                r["waiting_room"]["assigned"],
            ]
        )
    head = (
        f"Activity {report['from']} .. {report['to']} (slots by visit day; bookings and "
        "cancellations by the day they were made)\n"
    )
    table = _table(
        [
            "provider",
            "scope",
            "day",
            "free",
            "booked",
            "bookings",
            "central",
            "facility",
            "import",
            "cancelled",
            "by sms",
            "by portal",
            "wr assigned",
        ],
        rows,
    )
    wr = [
        [w["scope"], w["day"], w["entered"], w["left"], w["assigned"], w["waiting_at_end_of_day"]]
        for w in report["waiting_room"]
    ]
    out = head + table
    if wr:
        out += "\nWaiting room\n" + _table(
            ["scope", "day", "entered", "left", "assigned", "waiting at end of day"], wr
        )
    return out


def compliance_table(report: dict[str, Any]) -> str:
    rows = []
    for r in report["rows"]:
        share = r.get("share_booked_in_cer")
        rows.append(
            [
                r["provider"],
                r.get("scope") or "-",
                r.get("schedules_due"),
                (r.get("first_slots_transmitted") or "")[:10],
                r["schedules_status"],
                r.get("visits_after_payment_date"),
                f"{share:.1%}" if share is not None else "",
            ]
        )
    return f"Compliance as of {report['as_of'][:16]} UTC (R-SCOPE-3)\n" + _table(
        [
            "provider",
            "scope",
            "schedules due",
            "first slots",
            "schedules",
            "visits after pay date",
            "booked in CeR",
        ],
        rows,
    )
