"""Evaluation output: metric tables for the terminal."""
