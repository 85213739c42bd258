"""Experiment runners built on the training program (ablation.py: the paper's Table 2)."""
