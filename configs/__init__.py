"""Experiment configs: `python -m adatape.main --config=configs/FAMILY/NAME.py`."""
