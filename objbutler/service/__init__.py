"""The cutout service: IVOA SODA 1.0 sync and DataLink over a repository, an object-history endpoint and a page.

``objbutler serve URI`` runs :func:`objbutler.service.app.create_app` on uvicorn. The modules:

``params``
    SODA/DALI parameters -> stencils, dataset names, time intervals; every bad input a :class:`_SodaError`.
``regions``
    A stencil -> the pixel box that bounds it on an image (its WCS), with the service's size limits.
``encode``
    Answers as bytes: FITS (one stamp, many stamps, an object history), PNG, the DataLink VOTable.
``png``
    A grey-scale PNG writer (standard library only) for quick looks.
``metrics``
    Request counts and a latency summary per route.
``page``
    The gallery page served at ``/``.
``app``
    The Starlette application: routes, bearer-token auth, request ids, access log.

This subpackage needs the ``serve`` extra (Starlette and uvicorn); nothing else in objbutler imports it.
"""
