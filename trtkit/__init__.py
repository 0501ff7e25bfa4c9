"""Layer 5: the `trtkit` console script, a thin click layer over builder/recipes/deploy/plugins."""
