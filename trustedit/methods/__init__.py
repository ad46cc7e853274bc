"""Method implementations that belong to no side package (baseline editors)."""
