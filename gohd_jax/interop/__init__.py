"""Official PyTorch weights -> our parameters, and the ``gohd-parity`` checker.

This is the only room that knows PyTorch names.
"""
