"""diffaudit: audit diffusion-model checkpoints against their training data.

The core library: no web, queue or database imports (enforced by tests/test_layers.py).
"""

__version__ = "0.1.0"
