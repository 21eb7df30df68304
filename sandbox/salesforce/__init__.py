"""The Salesforce sandbox: OAuth, REST (sObjects, SOQL subset, sObject Collections) and the CometD
Streaming API with Change Data Capture, over one in-memory org seeded from ``sandbox.demo_data``.

Parts: ``store.py`` (records, schema), ``soql.py`` (query subset), ``org.py`` (transactions: every
write emits its change event), ``events.py`` (bus, replay, retention), ``oauth.py``, ``rest.py``,
``cometd.py``, ``control.py`` (``/_sandbox/`` extras) and ``sandbox.py`` (wiring). Used by tests
and local runs; never imported by production code.
"""

from sandbox.salesforce.sandbox import SalesforceSandbox

__all__ = ["SalesforceSandbox"]
