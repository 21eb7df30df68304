"""Composition, the consume runtime, handlers, thin consumers and the ``fleet`` CLI.

The only package that wires everything together; it may import every other package.
"""
