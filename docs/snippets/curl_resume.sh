curl -N -H 'Last-Event-ID: 44076300-1' 'http://localhost:8000/stream?channel=news'
