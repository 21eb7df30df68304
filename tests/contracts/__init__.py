"""Contract suites: each port's behaviour written once, run against its fake (unit) and its real
adapter over HTTP against the sandbox (integration). Subclass a ``*Contract`` class and provide
its fixtures; see ``whmcs.py`` and ``freebit.py``."""
