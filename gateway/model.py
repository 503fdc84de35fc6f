"""The central model (pydantic): what the booking rules work on.

FHIR is the wire format at the edges (``mappings/``); inside, handlers pass
these models or their plain-dict dumps.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class CentralLocation(BaseModel):
    """A facility (*placówka*) and the address parts used by location criteria."""

    name: str | None = None
    status: str = "active"
    postal_code: str | None = None
    city: str | None = None
    lines: list[str] = Field(default_factory=list)
    identifiers: list[dict[str, str | None]] = Field(default_factory=list)
