"""uda_dist: distributed unsupervised domain-adaptive semantic segmentation."""
