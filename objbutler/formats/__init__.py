"""File formats: FITS and Zarr images, JSON metadata."""
