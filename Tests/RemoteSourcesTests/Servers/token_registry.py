#!/usr/bin/env python3
"""A Bearer-token front door for a registry, for tests: Distribution 2.8 has no token server.

token_registry.py --upstream PORT [--user USER:PASSWORD] [--refresh-token TOKEN] [--lifetime SECONDS]

Prints its port. /v2/... is proxied to the registry on 127.0.0.1:UPSTREAM when it carries a live
token, else answered 401 with `WWW-Authenticate: Bearer realm=.../token,service=...,scope=...`.
/token issues tokens for Basic USER:PASSWORD that live LIFETIME seconds (expired ones are
refused, as a registry does). With --refresh-token, POST /token also issues them for the OAuth2
refresh-token grant docker's token spec describes (form grant_type=refresh_token,
refresh_token=TOKEN, service=, scope=, client_id=: what `docker login` leaves in config.json as
`identitytoken`), answered as OAuth2 does (`access_token`); a wrong refresh token gets 400
invalid_grant (RFC 6749 5.2). Blob GETs are redirected to /storage/... on `localhost` (another
host name than the 127.0.0.1 the client was given), which serves the blob without auth and counts
requests that arrive with an Authorization header: a client must not leak it to another host.
GET /__stats gives {"tokens": N, "refresh_grants": N, "refused_grants": N, "expired_refusals": N,
"leaks": N, "storage_requests": N} (refresh_grants: tokens issued for the refresh token).
"""
import argparse, base64, http.client, http.server, json, os, threading, time, urllib.parse

parser = argparse.ArgumentParser()
parser.add_argument("--upstream", type=int, required=True)
parser.add_argument("--user", default="")
parser.add_argument("--refresh-token", default=None)
parser.add_argument("--lifetime", type=float, default=3)
options = parser.parse_args()

lock = threading.Lock()
tokens = {}
stats = {"tokens": 0, "refresh_grants": 0, "refused_grants": 0, "expired_refusals": 0, "leaks": 0, "storage_requests": 0}
expected_basic = "Basic " + base64.b64encode(options.user.encode()).decode() if options.user else None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self):
        self.do_GET()

    def issue(self, field="token"):
        token = base64.b16encode(os.urandom(16)).decode()
        with lock:
            tokens[token] = time.monotonic() + options.lifetime
            stats["tokens"] += 1
        body = json.dumps({field: token, "expires_in": options.lifetime}).encode()
        return self.reply(200, body, [("Content-Type", "application/json")])

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
        field = lambda name: form.get(name, [""])[0]
        if not self.path.startswith("/token") or options.refresh_token is None:
            return self.reply(404)
        if (field("grant_type") != "refresh_token" or field("refresh_token") != options.refresh_token
                or field("service") != "test-registry" or not field("scope") or not field("client_id")):
            with lock:
                stats["refused_grants"] += 1
            return self.reply(400, b'{"error":"invalid_grant"}', [("Content-Type", "application/json")])
        with lock:
            stats["refresh_grants"] += 1
        return self.issue("access_token")

    def do_GET(self):
        port = self.server.server_address[1]
        if self.path == "/__stats":
            with lock:
                return self.reply(200, json.dumps(stats).encode(), [("Content-Type", "application/json")])
        if self.path.startswith("/token"):
            if expected_basic is None or self.headers.get("Authorization") != expected_basic:
                return self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            return self.issue()
        if self.path.startswith("/storage/"):
            with lock:
                stats["storage_requests"] += 1
                if self.headers.get("Authorization"):
                    stats["leaks"] += 1
            return self.proxy(self.path[len("/storage"):])
        if not self.path.startswith("/v2/"):
            return self.reply(404)
        authorization = self.headers.get("Authorization", "")
        live = False
        if authorization.startswith("Bearer "):
            with lock:
                expiry = tokens.get(authorization[7:])
                live = expiry is not None and time.monotonic() < expiry
                if expiry is not None and not live:
                    stats["expired_refusals"] += 1
        if not live:
            parts = self.path.split("/")
            repository = "/".join(parts[2:-2]) if len(parts) > 4 else ""
            challenge = (f'Bearer realm="http://127.0.0.1:{port}/token",service="test-registry",'
                         f'scope="repository:{repository}:pull"')
            return self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}',
                              [("WWW-Authenticate", challenge), ("Content-Type", "application/json")])
        if "/blobs/" in self.path and self.command == "GET":
            return self.reply(307, b"", [("Location", f"http://localhost:{port}/storage{self.path}")])
        return self.proxy(self.path)

    def proxy(self, path):
        connection = http.client.HTTPConnection("127.0.0.1", options.upstream, timeout=30)
        headers = {name: value for name, value in self.headers.items()
                   if name.lower() in ("range", "accept", "if-match", "if-none-match")}
        connection.request(self.command, path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if self.command != "HEAD" else response.getheader("Content-Length", "0")))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        connection.close()


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
