curl -N -H 'Last-Event-ID: 1a2b3c4d-7' 'http://localhost:8000/stream?channel=news'
