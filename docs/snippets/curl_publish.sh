curl -X POST http://localhost:8000/news -H 'Content-Type: application/json' -d '{"title": "Hello"}'
curl -X POST http://localhost:8000/news -H 'Content-Type: application/json' -d '{"title": "World"}'
