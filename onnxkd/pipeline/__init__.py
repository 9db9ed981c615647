"""`run`: a whole compression recipe (cache -> distill -> quantize -> bench) and its report."""
