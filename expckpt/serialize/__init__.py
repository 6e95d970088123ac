"""Bytes on disk: atomic writes, streamed hashing, staging, checkpoint files and directories.

Modules here may import from: errors, text, phases, policy, state; never from a package above this one
(the order is in tests/test_architecture.py).
"""
