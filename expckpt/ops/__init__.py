"""Operations on checkpoints a user runs: show, list, gc, verify, reset, report, pull, doctor.

Modules here may import from: everything below: ... store, publish; never from a package above this one
(the order is in tests/test_architecture.py).
"""
