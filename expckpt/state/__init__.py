"""What a checkpoint holds: the training state, RNG states, hyperparameters, safe values.

Modules here may import from: errors, text, policy; never from a package above this one
(the order is in tests/test_architecture.py).
"""
