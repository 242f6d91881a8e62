"""Offline reproduction of the papers' claims in the simulated environment (issue #8).

`python -m reproduce` (make reproduce) runs the whole pipeline through the app's importer and exporter
and the training CLI, then writes docs/reproduction.md, its plots, and var/bench/reproduce.json.
"""
