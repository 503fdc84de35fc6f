"""CeR Gateway: FHIR R4 integration gateway for central e-registration (centralna e-rejestracja).

The package ``gateway`` holds the application: the central model, the services
that apply the national booking rules, the HTTP API and the workers. Domain
modules import no adapter; ``gateway.bootstrap`` is the one place that wires
adapters in.
"""
