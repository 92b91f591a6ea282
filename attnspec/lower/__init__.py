"""Lowering: analysis of mask and score structure, and a plan per backend
(`attnspec.lower.backends` is the registry)."""
