"""Checkpoints: uploaded diffusers folders (or registered server-side folders), validated on arrival."""
