"""The e2e tier's shared fixture: the one traced `fleet demo up` of the session (``tests/e2e/fleet_demo.py``).

Registered here, not imported by each test module: a session fixture imported into three modules is
three fixtures, each run once per module, and sharing the run is the point.
"""

from tests.e2e.fleet_demo import traced_demo  # noqa: F401
