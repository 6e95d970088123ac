"""Git and the DVC cache: refs, commits and their records, cache objects, locks, the project.

Modules here may import from: errors, text, phases, faults, policy, serialize; never from a package above this one
(the order is in tests/test_architecture.py).
"""
