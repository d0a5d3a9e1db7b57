"""A local stand-in for the Hugging Face Hub: serves files at /{repo}/resolve/main/{name}.

It honours HTTP Range requests (so resumed downloads can be tested), counts requests, and can
be told to serve damaged bytes or to drop the connection part-way through a file.
"""

import http.server
import threading
import time


class HubServer:
    def __init__(self, files):
        self.files = dict(files)  # "owner/name/resolve/main/file" -> bytes
        self.requests = []  # (path, Range header or None)
        self.encodings = []  # the Accept-Encoding header of each request
        self.damage = set()  # paths served with their bytes changed
        self.cut_after = {}  # path -> bytes sent before the connection drops
        self.delay = {}  # path -> seconds to wait before answering
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                path = self.path.lstrip("/")
                outer.requests.append((path, self.headers.get("Range")))
                outer.encodings.append(self.headers.get("Accept-Encoding"))
                time.sleep(outer.delay.get(path, 0))
                body = outer.files.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path in outer.damage:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[len("bytes="):-1])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                cut = outer.cut_after.pop(path, None)
                self.wfile.write(part if cut is None else part[:cut])
                if cut is not None:
                    self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
