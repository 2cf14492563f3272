"""The basic test app under gevent's own WSGIServer (no gunicorn).

Shows the shutdown a custom server needs: on SIGTERM, end the streams with
``sse.shutdown()`` (they say goodbye and close), then stop the server.
Usage: ``python -m tests.apps.pywsgi_server PORT``.
"""

from gevent import monkey

monkey.patch_all()

import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

from tests.apps.basic import app, sse  # noqa: E402


def main() -> None:
    server = WSGIServer(("127.0.0.1", int(sys.argv[1])), app, log=None)

    def stop() -> None:
        with app.app_context():
            sse.shutdown()
        gevent.sleep(0.5)  # let the streams write their goodbye
        server.stop(timeout=2)

    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(stop))
    server.serve_forever()


if __name__ == "__main__":
    main()
