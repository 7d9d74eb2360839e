"""Sweeps of uda_dist recipes with Ray Tune (`python -m tune.sweep`): search spaces (spaces.py) and the sweep
command (sweep.py)."""
