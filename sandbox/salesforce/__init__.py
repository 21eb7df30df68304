"""The Salesforce sandbox: OAuth, REST (sObjects, SOQL subset, sObject Collections) and the CometD
Streaming API with Change Data Capture, over one in-memory org seeded from ``sandbox.demo_data``.

Parts: ``store.py`` (records, schema), ``soql.py`` (query subset), ``org.py`` (transactions: every
write emits its change event), ``events.py`` (bus, replay, retention), ``oauth.py``, ``rest.py``,
``cometd.py``, ``control.py`` (``/_sandbox/`` extras) and ``sandbox.py`` (wiring). Used by tests
and local runs; never imported by production code.

Faithful to the documented API shapes; the SIM inventory object (``SIM_Inventory__c`` with
``Status__c`` Available/Assigned, ``Phone_Number__c``, ``Serial_Number__c``) is our inference of the
portal's schema: only ``Assigned_Account__c``, ``Assigned_Order__c`` and ``SIM_Type__c`` are known.
"""

from sandbox.salesforce.sandbox import SalesforceSandbox

__all__ = ["SalesforceSandbox"]
