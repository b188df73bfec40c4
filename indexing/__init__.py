"""Derived indexes and the embedders that feed them."""
