"""Layer 1: the FP4 formats and the custom MoE/attention ops. Imports no other trtkit layer."""
