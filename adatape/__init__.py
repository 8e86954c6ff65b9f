"""adatape: adaptive-computation transformers, centred on AdaTape."""
