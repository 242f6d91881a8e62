"""Redline's training module: token-level reward models, FIGA, fine-grained PPO, baselines, evaluation.

A standalone package and CLI (`python -m training KIND`); it reads export files, reuses the `labels`
engine for token labels, and never imports the web app or a database library.
"""
