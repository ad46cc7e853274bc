"""Dataset specs and loaders. Files are read through ``$TRUSTEDIT_DATA_DIR`` or ``--data``."""
