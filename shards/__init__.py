"""Dataset trees -> WebDataset shards + manifests (python -m shards ...)."""
