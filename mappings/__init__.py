"""FHIR R4 <-> central model translation; code systems and concept maps live in ``data/``."""
