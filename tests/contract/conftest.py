"""Contract-suite fixtures: each port's fixtures live in their own module."""

from tests.contract.bus_fixtures import *  # noqa: F403
