"""Session-wide test setup: a deliberate torch thread count, and the tiny models trained once."""

from __future__ import annotations

import os

from diffaudit.device import configure_threads

# All cores by default; DIFFAUDIT_TORCH_THREADS=1 when several test runs share the machine.
configure_threads(int(os.environ.get("DIFFAUDIT_TORCH_THREADS", "0")))
