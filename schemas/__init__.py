"""Other people's data exactly as they send it (Salesforce CDC, WHMCS, Freebit); no business rules.

Pydantic models only; no I/O and no imports from ``adapters`` or ``workers``.
"""
