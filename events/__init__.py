"""The fleet's vocabulary: what can happen, where it travels, how it fails.

Owns topic names, the CloudEvents envelope, event models and the error tree.
Must not do I/O and must not import ``adapters`` or ``workers`` (a unit test enforces it).

Importing any part of the package imports every vocabulary module first (below), so the registry
in ``events.base`` is complete whoever imported first: ``decode_event`` knows every type and
``event_types()`` lists them all, without ``events.base`` importing the modules that subclass its
``DomainEvent`` (an import circle). A new vocabulary module is added here.
"""

from events import billing, fulfillment, salesforce

__all__ = ["billing", "fulfillment", "salesforce"]
