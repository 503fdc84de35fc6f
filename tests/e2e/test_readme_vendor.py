"""The README's "For vendors: the FHIR R4 API in five minutes" cannot rot: its ``sh``
block runs as one script against a real ``cer-gateway serve`` (sandbox, embedded
default), and every answer it promises in its comments is checked."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.e2e.test_guide import ROOT, gateway

__all__ = ["gateway"]  # the fixture, shared with the guide's test

README = ROOT / "README.md"


def vendor_block() -> str:
    text = README.read_text()
    section = text[text.index("## For vendors: the FHIR R4 API in five minutes") :]
    block = re.search(r"^```sh\n(.*?)^```", section, re.S | re.M)
    assert block, "the vendors' section lost its commands"
    return block.group(1)


def test_the_readme_vendor_walkthrough_answers_as_it_says(gateway: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "docs").symlink_to(ROOT / "docs")  # the commands run from the repository root
    body = vendor_block().replace("BASE=http://127.0.0.1:8080", f"BASE={gateway}")
    (work / "vendor.sh").write_text("set -euo pipefail\n" + body)
    done = subprocess.run(
        ["bash", "vendor.sh"], cwd=work, capture_output=True, text=True, timeout=120
    )
    out = done.stdout
    assert done.returncode == 0, f"{out}\n{done.stderr}"
    assert '"fhirVersion":"4.0.1"' in out.replace(" ", "")
    assert out.count('"type":"transaction-response"') == 1
    assert '"status":"201 Created"' in out
    statuses = re.findall(r"HTTP/1\.1 (\d{3}) ", out)  # curl -i (after JSON with no newline)
    assert statuses == ["201", "409"], out[-2000:]  # booked, then "the slot is taken"
    assert re.search(r'^ETag: W/"1"', out, re.M | re.I)
