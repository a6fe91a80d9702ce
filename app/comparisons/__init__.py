"""A/B comparisons: two finished evaluations of one spec, compared sample by sample."""
