"""repid testing helpers."""
