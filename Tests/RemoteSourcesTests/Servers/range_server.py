#!/usr/bin/env python3
"""An HTTP/1.1 server for the remote-source tests: files with Range, ETag and If-Match, or a
proxy in front of another server (moto), with faults injected on request.

  range_server.py --root DIR            serve DIR (GET/HEAD, one range per request, sendfile)
  range_server.py --upstream HOST:PORT  relay every request to HOST:PORT (Host header kept)
  ... --tls CERT KEY                    serve HTTPS with that certificate chain and key
  ... --bind ADDR                       listen on ADDR (127.0.0.1)
  ... --delay S                         wait S seconds before answering each data request: a
                                        link's round trip where tc has no netem (benchmarks)

It binds 127.0.0.1 (or ADDR) on a free port and prints the port on its first line of stdout.
Faults: `POST /__fault?mode=M&count=N[&after=K][&seconds=S]` makes the next N data requests
(after skipping K) misbehave; `DELETE /__fault` clears them. Modes:
  reset     close the connection without an answer
  status503 answer 503 (as S3 and load balancers do when busy)
  full200   answer 200 with the whole object, ignoring Range
  truncate  announce the full length, send half of it, close
  stall     send the headers and half of the body, then nothing for S seconds
  corrupt   send the right length with the bytes flipped (no checksum can see it: tests
            document what a client without a digest gets)
  region    (&region=R) answer as S3 does a SigV4 request scoped to another region than R:
            400 AuthorizationHeaderMalformed naming R (moto accepts any region)
  hugetotal (&total=N) answer the range asked for with a Content-Range that claims the object
            is N bytes (what a hostile server can say to size our cache)
  endless404 answer 404 with a chunked body that never ends (until the client hangs up)
  endless302 answer 302 to the same URL with a chunked body that never ends
  trickle   answer 206 rightly, one body byte every 0.2 s
  hostile403 answer 403 with an S3 error whose <Code> holds a newline and terminal escape
            sequences and whose <Message> is 100 KB long (what a hostile server can send)
`GET /__stats` returns JSON counters: requests, ranges (bytes asked), faults applied, and
range_log: the Range header of each ranged request, in arrival order (its last 10,000).
"""
import argparse
import collections
import http.client
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
DELAY = 0.0
FAULTS = []  # [{"mode", "count", "after", "seconds"}]
STATS = {"requests": 0, "faults": 0, "bytes": 0, "range_requests": 0}
RANGE_LOG = collections.deque(maxlen=10000)


def take_fault():
    with LOCK:
        STATS["requests"] += 1
        for fault in FAULTS:
            if fault["after"] > 0:
                fault["after"] -= 1
                return None
            if fault["count"] > 0:
                fault["count"] -= 1
                STATS["faults"] += 1
                return dict(fault)
        return None


def parse_range(header, size):
    """(start, end) inclusive, or 'invalid', or None when there is no Range header."""
    if header is None:
        return None
    if not header.startswith("bytes=") or "," in header:
        return "invalid"
    first, _, last = header[6:].partition("-")
    try:
        if first == "":
            length = int(last)
            return (max(0, size - length), size - 1) if length > 0 else "invalid"
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return "invalid"
    if start >= size or end < start:
        return "invalid"
    return (start, min(end, size - 1))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "range-server"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm and the
        # client's delayed ACK add 40 ms to every small response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def control(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/__stats":
            with LOCK:
                body = json.dumps(dict(STATS, range_log=list(RANGE_LOG))).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True
        if url.path == "/__fault":
            query = dict(urllib.parse.parse_qsl(url.query))
            with LOCK:
                if self.command == "DELETE":
                    FAULTS.clear()
                else:
                    FAULTS.append({
                        "mode": query["mode"], "count": int(query.get("count", "1")),
                        "after": int(query.get("after", "0")), "seconds": float(query.get("seconds", "30")),
                        "region": query.get("region", ""), "total": int(query.get("total", "0")),
                    })
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return True
        return False

    def do_POST(self):
        if not self.control():
            self.send_error(405)

    def do_DELETE(self):
        if not self.control():
            self.send_error(405)

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head=False):
        if self.control():
            return
        if DELAY:
            time.sleep(DELAY)
        if self.headers.get("Range"):
            with LOCK:
                STATS["range_requests"] += 1
                RANGE_LOG.append(self.headers["Range"])
        fault = take_fault()
        if fault and fault["mode"] == "reset":
            self.close_with_reset()
            return
        if fault and fault["mode"] == "status503":
            body = b"<Error><Code>SlowDown</Code></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if fault and fault["mode"] in ("endless404", "endless302"):
            self.send_response(404 if fault["mode"] == "endless404" else 302)
            if fault["mode"] == "endless302":
                self.send_header("Location", self.path)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
            try:
                for _ in range(16384):  # 1 GiB at most
                    self.wfile.write(chunk)
            except OSError:
                pass
            self.close_connection = True
            return
        if fault and fault["mode"] == "hostile403":
            body = (b"<Error><Code>AccessDenied\n\x1b[2J\x1b]0;owned\x07</Code><Message>"
                    + b"x" * 100_000 + b"</Message></Error>")
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if fault and fault["mode"] == "region":
            scope = re.search(r"Credential=[^/]+/[0-9]+/([^/]+)/", self.headers.get("Authorization", ""))
            if scope and scope.group(1) != fault["region"]:
                body = (
                    "<Error><Code>AuthorizationHeaderMalformed</Code><Message>The authorization header is malformed;"
                    " the region '%s' is wrong; expecting '%s'</Message><Region>%s</Region></Error>"
                    % (scope.group(1), fault["region"], fault["region"])).encode()
                self.send_response(400)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
        if UPSTREAM:
            status, headers, body = self.relay(fault)
        else:
            status, headers, body = self.local(fault, head)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if head or body is None:
            return
        with LOCK:
            STATS["bytes"] += len(body) if isinstance(body, bytes) else body[2]
        if fault and fault["mode"] in ("truncate", "stall"):
            data = body if isinstance(body, bytes) else read_span(*body)
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if fault["mode"] == "stall":
                time.sleep(fault["seconds"])
            self.close_with_reset()
            return
        if fault and fault["mode"] == "trickle":
            data = body if isinstance(body, bytes) else read_span(*body)
            try:
                for index in range(len(data)):
                    self.wfile.write(data[index:index + 1])
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:
                pass
            self.close_connection = True
            return
        if fault and fault["mode"] == "corrupt":
            data = body if isinstance(body, bytes) else read_span(*body)
            self.wfile.write(bytes(b ^ 0xFF for b in data))
            return
        if isinstance(body, bytes):
            self.wfile.write(body)
        elif TLS:
            # sendfile would bypass the TLS layer.
            self.wfile.write(read_span(*body))
        else:
            path, start, length = body
            self.wfile.flush()
            with open(path, "rb") as f:
                sent = 0
                while sent < length:
                    n = os.sendfile(self.connection.fileno(), f.fileno(), start + sent, length - sent)
                    if n == 0:
                        break
                    sent += n

    def close_with_reset(self):
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass

    def local(self, fault, head):
        path = os.path.join(ROOT, urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/"))
        try:
            st = os.stat(path)
        except OSError:
            return 404, [("Content-Length", "0")], b""
        size = st.st_size
        etag = '"%x-%x"' % (st.st_size, st.st_mtime_ns)
        modified = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(st.st_mtime))
        common = [("ETag", etag), ("Last-Modified", modified), ("Accept-Ranges", "bytes")]
        match = self.headers.get("If-Match")
        if match is not None and match != etag and match != "*":
            return 412, [("Content-Length", "0")], b""
        wanted = parse_range(self.headers.get("Range"), size)
        if fault and fault["mode"] == "full200":
            wanted = None
        if wanted == "invalid":
            return 416, common + [("Content-Range", "bytes */%d" % size), ("Content-Length", "0")], b""
        if wanted is None:
            return 200, common + [("Content-Length", str(size))], (path, 0, size)
        start, end = wanted
        claimed = fault["total"] if fault and fault["mode"] == "hugetotal" else size
        return 206, common + [
            ("Content-Range", "bytes %d-%d/%d" % (start, end, claimed)), ("Content-Length", str(end - start + 1))
        ], (path, start, end - start + 1)

    def relay(self, fault):
        connection = http.client.HTTPConnection(*UPSTREAM, timeout=30)
        headers = {name: value for name, value in self.headers.items()}
        if fault and fault["mode"] == "full200":
            headers.pop("Range", None)
        connection.request(self.command, self.path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        skip = {"transfer-encoding", "connection", "content-length", "keep-alive"}
        out = [(k, v) for k, v in response.getheaders() if k.lower() not in skip]
        out.append(("Content-Length", str(len(body))))
        return response.status, out, body


def read_span(path, start, length):
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


def main():
    global ROOT, UPSTREAM, TLS, DELAY
    parser = argparse.ArgumentParser()
    parser.add_argument("--root")
    parser.add_argument("--upstream")
    parser.add_argument("--tls", nargs=2)
    parser.add_argument("--bind", default="127.0.0.1")
    parser.add_argument("--delay", type=float, default=0.0)
    args = parser.parse_args()
    DELAY = args.delay
    ROOT = args.root
    TLS = bool(args.tls)
    UPSTREAM = None
    if args.upstream:
        host, _, port = args.upstream.rpartition(":")
        UPSTREAM = (host, int(port))
    server = ThreadingHTTPServer((args.bind, 0), Handler)
    server.daemon_threads = True
    if args.tls:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*args.tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
