"""Dynamics toolkit: entropy flow, convergence, Wasserstein gradient flows, generalization, scaling fits."""
