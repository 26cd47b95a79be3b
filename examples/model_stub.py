#!/usr/bin/env python3
"""A stand-in for a model API, for examples/workflows/model.json: `POST /v1/complete` with
`Authorization: Bearer <key>` and `{"prompt": "..."}` answers `{"completion": "..."}`; a
missing key is 401. Usage: python3 examples/model_stub.py [PORT] (default 8089)."""
import http.server
import json
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != "/v1/complete":
            return self.answer(404, {"error": "no such endpoint"})
        if not (self.headers.get("authorization") or "").startswith("Bearer "):
            return self.answer(401, {"error": "missing API key"})
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        prompt = str(body.get("prompt", ""))
        self.answer(200, {"completion": f"You said {len(prompt.split())} words: {prompt}", "model": "stub-1"})

    def answer(self, status, document):
        data = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8089
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
