"""Data loaders (text corpora)."""
