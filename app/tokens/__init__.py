"""Projects and their bearer tokens."""
