"""Composition, the consume runtime, one folder per flow, the ingress bridges and the ``fleet`` CLI.

The only package that wires everything together; it may import every other package of the product
(events, schemas, adapters), never the development tools (devtools).
"""
