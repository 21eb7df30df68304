"""The sf-writer: coalescing, composite batching, per-record outcomes and the API budget governor.

Used by ``workers.handlers.sf_writer``; see docs/sf-writer.md. Must not know Kafka or offsets.
"""

from workers.sf_writer.governor import DEFERRED_CODE, BudgetGovernor
from workers.sf_writer.window import BatchWindow
from workers.sf_writer.writer import Outcome, Pending, SalesforceWriter, WriterStats

__all__ = ["DEFERRED_CODE", "BatchWindow", "BudgetGovernor", "Outcome", "Pending", "SalesforceWriter", "WriterStats"]
