"""The flask-sse-keepalive demo app: ``gunicorn -k gevent demo.app:app``."""
