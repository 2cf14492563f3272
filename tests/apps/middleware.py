"""The basic test app behind two common kinds of WSGI middleware.

``ProxyFix`` (environ only) and a middleware that adds a response header and
wraps the response iterable, as tracing and error-reporting middleware do.
"""

from __future__ import annotations

from werkzeug.middleware.proxy_fix import ProxyFix

from tests.apps.basic import app


class Wrapping:
    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        def start(status, headers, exc_info=None):
            return start_response(status, [*headers, ("X-Wrapped", "yes")], exc_info)

        return _Iterable(self.wsgi_app(environ, start))


class _Iterable:
    def __init__(self, inner):
        self.inner = inner

    def __iter__(self):
        yield from self.inner

    def close(self):
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


app.wsgi_app = Wrapping(ProxyFix(app.wsgi_app, x_for=1))  # type: ignore[method-assign]
