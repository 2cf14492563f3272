from flask import Flask, request

from flask_sse_keepalive import SSE

app = Flask(__name__)
sse = SSE(app)  # serves GET /stream?channel=...


@app.post("/news")
def post_news():
    return {"id": sse.publish(request.get_json(), event="headline", channel="news")}
