"""The production entry point: ``gunicorn --worker-class gthread --workers 1 --threads 64 convlens.wsgi:app``.

One worker process: jobs, rooms and frames live in it (see the Procfile).
"""

from .app import create_app
from .runtime import configure_threads, tune_malloc

tune_malloc()
configure_threads()
app = create_app()
