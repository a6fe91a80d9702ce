"""The test suite as a package, so that `tests.<module>` is this folder's even where an installed
distribution ships a top-level `tests` package of its own (torch-fidelity does)."""
