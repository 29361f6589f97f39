"""An auth service for tests/auth_request.rs, as a user would write one behind nginx's
auth_request: it finds the client's token (Bearer header, `token` cookie, `token` query
parameter of X-Original-URI, or a `token.NAME` WebSocket subprotocol) and answers 200 with
X-Auth-User for alice and bob, 403 for eve, 502 for "broken", after 3 s for "slow", an
answer head of 250 KB for "huge", a 100 KB body for "talker" (allowed), a 103 before
alice's answer for "early", else 401.
Each request it gets is appended to LOG as a JSON line.

    python3 server.py PORT LOG
"""
import http.server
import json
import sys
import time
import urllib.parse

PORT, LOG = int(sys.argv[1]), sys.argv[2]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.answer()

    def do_POST(self):
        self.answer()

    def answer(self):
        orig = self.headers.get("X-Original-URI", "")
        token = None
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            token = auth[7:]
        for part in self.headers.get("Cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == "token":
                token = v
        q = urllib.parse.parse_qs(urllib.parse.urlparse(orig).query)
        if "token" in q:
            token = q["token"][0]
        for p in self.headers.get("Sec-WebSocket-Protocol", "").split(","):
            p = p.strip()
            if p.startswith("token."):
                token = p[6:]
        with open(LOG, "a") as f:
            f.write(json.dumps({
                "path": self.path,
                "orig": orig,
                "method": self.headers.get("X-Original-Method"),
                "token": token,
                "port": self.client_address[1],
                "content_length": self.headers.get("Content-Length"),
                "upgrade": self.headers.get("Upgrade"),
            }) + "\n")
        if token == "slow":
            time.sleep(3)
        if token == "huge":
            # An answer head past any proxy's bound.
            self.send_response(200)
            for i in range(2000):
                self.send_header(f"X-Filler-{i}", "x" * 60)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if token == "early":
            # Early hints before the answer: the client must not see them.
            self.send_response_only(103)
            self.send_header("Link", "</style.css>; rel=preload")
            self.end_headers()
            self.wfile.flush()
            token = "alice"
        if token == "talker":
            # Allowed, with a body (the connection is not kept after it).
            body = b"x" * 100000
            self.send_response(200)
            self.send_header("X-Auth-User", token)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        status = {"alice": 200, "bob": 200, "eve": 403, "broken": 502}.get(token, 401)
        self.send_response(status)
        if status == 200:
            self.send_header("X-Auth-User", token)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
