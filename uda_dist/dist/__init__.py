"""Distributed pieces: collectives (the only torch.distributed code) and the DeepSpeed engine adapter."""
