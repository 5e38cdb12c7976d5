"""The Procfile's WSGI app: ``gunicorn --config python:convlens.serving convlens.wsgi:app``.

The gunicorn settings (one gthread worker of 64 threads: jobs, rooms and frames live in it) are in
:mod:`convlens.serving`, which ``convlens serve`` runs too.
"""

from .app import create_app
from .runtime import configure_threads, tune_malloc

tune_malloc()
configure_threads()
app = create_app()
