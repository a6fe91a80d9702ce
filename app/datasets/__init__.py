"""Datasets: uploaded zips of images or .npz arrays, and built-ins visible to every project."""
