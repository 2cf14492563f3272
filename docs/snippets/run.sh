gunicorn -k gevent app:app
