"""Project benchmarks. `python -m bench NAME` runs one and writes var/bench/NAME.json; no name runs all."""
