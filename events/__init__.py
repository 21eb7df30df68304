"""The fleet's vocabulary: what can happen, where it travels, how it fails.

Owns topic names, the CloudEvents envelope, event models and the error tree.
Must not do I/O and must not import ``adapters`` or ``workers`` (a unit test enforces it).
"""
