"""Redline web application (FastAPI). Never imports torch: training runs as a subprocess."""
