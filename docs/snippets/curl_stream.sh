curl -N 'http://localhost:8000/stream?channel=news'
