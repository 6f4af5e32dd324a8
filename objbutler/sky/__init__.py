"""Where images lie on the sky: footprints in the registry, the sky index, sky queries and cutouts.

* :mod:`objbutler.sky.geometry`: unit vectors, tangent planes, point-in-polygon (pure numpy);
* :mod:`objbutler.sky.footprint`: the sky record of an image (polygon, WCS cards, time, band);
* :mod:`objbutler.sky.index`: the zone-grid index over a registry state's footprints;
* :mod:`objbutler.sky.query`: ``find_images`` and ``cutouts_at`` (used by the Butler);
* :mod:`objbutler.sky.reindex`: sky records for images put before they existed;
* :mod:`objbutler.sky.catalog`: the ``objbutler cutouts-at`` catalogue writer.
"""
