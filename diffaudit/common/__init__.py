"""Helpers every stage shares: the resumable batch sampler, the get-or-compute cache, the split hash, figures."""
