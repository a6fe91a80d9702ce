"""Figures, one module per analysis; each returns PNG bytes through diffaudit.common.figures."""
