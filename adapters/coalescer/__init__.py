"""``Coalescer``: what concurrent callers ask for close together goes to a slow resource in one call.

The fleet's one way of sharing a round trip among callers: the webhook receiver's Kafka batches
(``adapters.kafka.BatchingProducer``) and Redis marks (``adapters.webhook_dedupe``), sf-cdc's bulk
Order reads (``workers.ingress.order_reads``) and the sf-writer's window (``workers.sf_writer.window``).
Owns the gathering, the waiting and the answering; must not know what an item means (the call does).

What it promises (``tests/unit/test_coalescer.py`` pins each point; a Hypothesis property checks
the calls, bounds, answers and cancellations over random interleavings). ``core`` holds the
``Coalescer``, ``policy`` the linger policies.

* **One call for many callers.** ``submit(item)`` queues the item and returns a future. A call
  takes the queue, oldest first, in the event-loop iteration after the first item arrived, so
  whatever was asked in the same iteration goes with it. At most ``max_in_flight`` calls run at once
  and at most one call forms (waits for its items) at a time: what arrives while the calls run waits
  and leaves in the next one, so calls grow with the load instead of multiplying.
* **Bounded calls.** A call carries at most ``max_items``, counted by ``weight`` (1 per item by
  default); one item heavier than that goes alone. ``None``: no bound (the call splits itself).
* **Lingering only when a policy says so.** Without a ``linger`` policy a call never waits for more
  items. ``ByRate`` and ``ByRound`` wait only under load (an arrival rate, or a last call of some
  size), never longer than their deadline, and stop as soon as their ``fill`` is queued: a linger
  that ends by filling costs no timer wake-up, and a quiet coalescer none at all.
* **Each caller its own answer.** The call returns one outcome per item, in order: a value settles
  that item's future, an exception instance fails that item alone. A call that raises fails all its
  items, each with its own exception made by ``errors(item, exc)`` (a shared exception would
  collect the traceback of every caller that re-raises it). Every item is answered exactly once.
* **Deadlines without timers.** With ``timeout_s`` no caller waits longer than that from its
  ``submit``: a call is bounded by its oldest item's deadline (one ``asyncio.timeout_at``, cancelled
  when the call returns in time), and an item already past its deadline when taken fails at once.
  No timer per item or per loop turn, so an idle coalescer never wakes the loop.
* **Cancellation-safe.** A caller that stops waiting (its future cancelled) is skipped if its call
  was not taken yet and its answer dropped otherwise; the others are unaffected. ``aclose()``, or a
  cancelled call task, answers every caller still waiting with ``errors(item, CoalescerClosed())``:
  nothing is dropped silently.
* **Riders.** ``push(item, within_s=...)`` queues an item nobody awaits (a write-behind): it does
  not start a call, it rides with the next one, or leaves on its own ``within_s`` after it arrived.
  Its outcome is ignored; a call that cares reports its riders' failures itself.
"""

from adapters.coalescer.core import Call, Coalescer, CoalescerClosed, own_exception
from adapters.coalescer.policy import ArrivalRate, ByRate, ByRound, Linger, Load

__all__ = [
    "ArrivalRate",
    "ByRate",
    "ByRound",
    "Call",
    "Coalescer",
    "CoalescerClosed",
    "Linger",
    "Load",
    "own_exception",
]
