"""File formats: FITS and Zarr images, JSON metadata."""

from objbutler.formats._image import Image, as_image, to_nddata

__all__ = ["Image", "as_image", "to_nddata"]
