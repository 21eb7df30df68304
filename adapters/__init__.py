"""One module per external system, each with the same shape: Protocol port, real implementation, fake.

Adapters may import ``events`` and ``schemas``; never ``workers``. They receive their clients and
pools from the composition root and never read configuration themselves.
"""
