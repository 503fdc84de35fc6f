"""The HTTP API (aiohttp): FHIR provider side, patient channel, sandbox, operations."""
