"""Label files shipped with edge-classifier (installed as the package data ``edge.labels``)."""
