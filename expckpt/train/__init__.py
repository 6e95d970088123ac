"""The training side: the one core (Checkpointer) with its handlers and coordinators, CheckpointLive, resume rules, signals.

Modules here may import from: everything below: ... publish, ops; never from a package above this one
(the order is in tests/test_architecture.py).
"""
