"""The sf-writer: coalescing, composite batching, per-record outcomes, the API budget governor and the call cap.

``route`` binds it into the runtime (``bind(deps)``, which ``workers.routes`` imports); the other
modules must not know Kafka or offsets. See docs/sf-writer.md.
"""

from workers.sf_writer.gate import CallGate
from workers.sf_writer.governor import DEFERRED_CODE, BudgetGovernor
from workers.sf_writer.metrics import SfWriterCollector
from workers.sf_writer.window import BatchWindow
from workers.sf_writer.writer import Outcome, Pending, SalesforceWriter, WriterStats

__all__ = [
    "DEFERRED_CODE",
    "BatchWindow",
    "BudgetGovernor",
    "CallGate",
    "Outcome",
    "Pending",
    "SalesforceWriter",
    "SfWriterCollector",
    "WriterStats",
]
