"""Checkpoints this project trained itself, each with its model card (installed as compress.checkpoints)."""
