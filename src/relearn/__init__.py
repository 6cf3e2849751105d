"""relearn: the iterative ML loop (data, features, training, serving, monitoring, retraining)."""

__version__ = "0.1.0"
