"""Local stand-ins for Salesforce, WHMCS and Freebit that speak their real wire formats.

Used by tests, benchmarks and ``make run``; never imported by production code paths.
"""
