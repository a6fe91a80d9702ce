"""The small networks the project trains: image classifiers (classifier) and guidance networks (guidance)."""
