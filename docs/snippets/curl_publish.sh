curl --json '{"title": "Hello"}' http://localhost:8000/news
curl --json '{"title": "World"}' http://localhost:8000/news
