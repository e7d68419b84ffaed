"""`gandid serve`: explore a run and paint interventions live in the browser (docs/serve.md).

:mod:`gandid.serve.explorer` does the work on the run's models; :mod:`gandid.serve.app` is the ASGI app
(needs the ``serve`` extra: starlette, uvicorn); the views are the static files in ``static/``.
"""
