"""Publishing checkpoints: the committer, retention during training, pushing to remotes.

Modules here may import from: everything below: errors, text, phases, policy, state, serialize, store; never from a package above this one
(the order is in tests/test_architecture.py).
"""
