"""Weights & Biases: the trials' and jobs' runs (`runs`) and a reader of offline runs that
needs no server (`offline`)."""
