"""When to save, what to keep, how training goes: policies and rules as data, no I/O.

Modules here may import from: errors, text, phases, faults; never from a package above this one
(the order is in tests/test_architecture.py).
"""
