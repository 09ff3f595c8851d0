"""Sample quality: how sharp and how data-like a model's images are, beside how likely it finds the data."""
