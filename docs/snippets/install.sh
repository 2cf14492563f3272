pip install flask-sse-keepalive
pip install 'flask-sse-keepalive[redis]'
