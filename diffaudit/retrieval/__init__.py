"""Exact nearest-neighbour retrieval, blocked and memory-bounded."""

from diffaudit.retrieval.knn import Neighbours, nearest_neighbours

__all__ = ["Neighbours", "nearest_neighbours"]
