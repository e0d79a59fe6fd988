#!/usr/bin/env python3
"""A small in-memory Confluent Schema Registry for streamtract's tests and demos.

No Schema Registry server can be installed from our package registries, so the tests start this
one. It implements the documented REST endpoints that Avro producers and consumers use, in the
shapes confluent-kafka's own SchemaRegistryClient expects (the tests write with its
AvroSerializer and read with its AvroDeserializer, unchanged):

  POST /subjects/{subject}/versions        register (the same schema text keeps its id) -> {"id"}
  POST /subjects/{subject}                 look a schema up under a subject
  GET  /schemas/ids/{id}                   the schema of an id -> {"schema"}
  GET  /subjects                           subject names
  GET  /subjects/{subject}/versions        version numbers
  GET  /subjects/{subject}/versions/{v}    a version ("latest" or a number)
  GET/PUT /config[/{subject}]              compatibility; always NONE (any change is accepted)

Compatibility is not checked: evolution tests register v1 and v2 of a record under one subject.

For the bad-input tests it can be told to misbehave (test-only endpoints, never authenticated):

  POST /_test/fail   {"status": 500, "count": N | "seconds": S, "path": "/schemas/ids"}
                     answer `status` to requests whose path starts with `path` (all if absent),
                     for the next N such requests or for S seconds ({} clears it); status 0
                     closes the connection without an answer, as a registry dying mid-request
  POST /_test/forget {"id": N}     drop a schema id, so that fetching it answers 404
  POST /_test/stop                 stop listening and exit

With --user/--password every other request needs that HTTP basic auth (401 otherwise).

Usage: schema-registry.py [--host 127.0.0.1] [--port 0] [--user U --password P]
It prints `listening on http://HOST:PORT` on stdout once it accepts connections.
"""

import argparse
import base64
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class Store:
    """Schemas by id, and per subject the ids of its versions in order."""

    def __init__(self):
        self.lock = threading.Lock()
        self.schemas = {}  # id -> {"schema": text, "schemaType": type}
        self.ids_by_text = {}  # (type, text) -> id
        self.subjects = {}  # subject -> [id, ...] (version n is index n-1)
        self.fault = None  # {"status", "path", "count" | "until"}
        self.requests = 0

    def register(self, subject, text, kind):
        with self.lock:
            key = (kind, text)
            sid = self.ids_by_text.get(key)
            if sid is None:
                sid = len(self.ids_by_text) + 1
                self.ids_by_text[key] = sid
                self.schemas[sid] = {"schema": text, "schemaType": kind}
            versions = self.subjects.setdefault(subject, [])
            if sid not in versions:
                versions.append(sid)
            return sid, versions.index(sid) + 1

    def take_fault(self, path):
        """The status to answer instead of serving, if a fault applies to this request."""
        with self.lock:
            f = self.fault
            if f is None or not path.startswith(f.get("path") or "/"):
                return None
            if "until" in f and time.monotonic() >= f["until"]:
                self.fault = None
                return None
            if "count" in f:
                f["count"] -= 1
                if f["count"] <= 0:
                    self.fault = None
            return f["status"]


def schema_body(store, sid, subject=None, version=None):
    entry = store.schemas[sid]
    body = {"id": sid, "schema": entry["schema"]}
    if entry["schemaType"] != "AVRO":
        body["schemaType"] = entry["schemaType"]
    if subject is not None:
        body["subject"] = subject
        body["version"] = version
    return body


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "streamtract-test-registry/1"

    # -- plumbing --------------------------------------------------------------------------

    def log_message(self, fmt, *args):  # quiet unless asked
        if self.server.verbose:
            sys.stderr.write("schema-registry: " + (fmt % args) + "\n")

    def send_json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, message):
        self.send_json(status, {"error_code": code, "message": message})

    def read_json(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except json.JSONDecodeError as e:
            self.error(400, 400, f"body is not JSON: {e}")
            return None

    def authorized(self):
        user = self.server.user
        if user is None:
            return True
        expected = "Basic " + base64.b64encode(f"{user}:{self.server.password}".encode()).decode()
        return self.headers.get("Authorization") == expected

    def route(self, method):
        path = unquote(urlsplit(self.path).path).rstrip("/") or "/"
        store = self.server.store
        if path.startswith("/_test/"):
            return self.test_endpoint(method, path)
        with store.lock:
            store.requests += 1
        status = store.take_fault(path)
        if status == 0:  # as if the server died mid-request: close without an answer
            self.close_connection = True
            return None
        if status is not None:
            return self.error(status, status * 100 + 1, f"injected failure {status}")
        if not self.authorized():
            return self.error(401, 401, "Unauthorized")
        return self.api(method, path)

    do_GET = lambda self: self.route("GET")  # noqa: E731
    do_POST = lambda self: self.route("POST")  # noqa: E731
    do_PUT = lambda self: self.route("PUT")  # noqa: E731
    do_DELETE = lambda self: self.route("DELETE")  # noqa: E731

    # -- the registry API ------------------------------------------------------------------

    def api(self, method, path):
        store = self.server.store
        m = re.fullmatch(r"/schemas/ids/(\d+)", path)
        if m and method == "GET":
            sid = int(m.group(1))
            if sid not in store.schemas:
                return self.error(404, 40403, f"Schema {sid} not found")
            return self.send_json(200, schema_body(store, sid))
        if path == "/subjects" and method == "GET":
            return self.send_json(200, sorted(store.subjects))
        m = re.fullmatch(r"/subjects/([^/]+)/versions", path)
        if m:
            subject = m.group(1)
            if method == "POST":
                return self.register(subject)
            if method == "GET":
                if subject not in store.subjects:
                    return self.error(404, 40401, f"Subject '{subject}' not found.")
                return self.send_json(200, list(range(1, len(store.subjects[subject]) + 1)))
        m = re.fullmatch(r"/subjects/([^/]+)/versions/([^/]+)", path)
        if m and method == "GET":
            return self.version(m.group(1), m.group(2))
        m = re.fullmatch(r"/subjects/([^/]+)", path)
        if m and method == "POST":
            return self.lookup(m.group(1))
        if re.fullmatch(r"/config(/[^/]+)?", path):
            if method == "PUT":
                body = self.read_json()
                if body is None:
                    return None
                return self.send_json(200, {"compatibility": "NONE"})
            if method == "GET":
                return self.send_json(200, {"compatibilityLevel": "NONE"})
        return self.error(404, 404, f"no endpoint {method} {path}")

    def register(self, subject):
        body = self.read_json()
        if body is None:
            return None
        text = body.get("schema")
        if not isinstance(text, str):
            return self.error(422, 42201, "Either the input schema or one of its references is invalid")
        kind = body.get("schemaType") or "AVRO"
        if kind == "AVRO":
            try:
                json.loads(text)
            except json.JSONDecodeError:
                return self.error(422, 42201, "Invalid schema: not JSON")
        sid, _ = self.server.store.register(subject, text, kind)
        return self.send_json(200, {"id": sid})

    def version(self, subject, version):
        store = self.server.store
        versions = store.subjects.get(subject)
        if not versions:
            return self.error(404, 40401, f"Subject '{subject}' not found.")
        if version in ("latest", "-1"):
            n = len(versions)
        elif version.isdigit() and 1 <= int(version) <= len(versions):
            n = int(version)
        else:
            return self.error(404, 40402, f"Version {version} not found.")
        return self.send_json(200, schema_body(store, versions[n - 1], subject, n))

    def lookup(self, subject):
        store = self.server.store
        body = self.read_json()
        if body is None:
            return None
        key = (body.get("schemaType") or "AVRO", body.get("schema"))
        sid = store.ids_by_text.get(key)
        versions = store.subjects.get(subject)
        if versions is None:
            return self.error(404, 40401, f"Subject '{subject}' not found.")
        if sid is None or sid not in versions:
            return self.error(404, 40403, "Schema not found")
        return self.send_json(200, schema_body(store, sid, subject, versions.index(sid) + 1))

    # -- test controls ---------------------------------------------------------------------

    def test_endpoint(self, method, path):
        store = self.server.store
        body = self.read_json() if method == "POST" else {}
        if body is None:
            return None
        if path == "/_test/fail":
            with store.lock:
                if not body:
                    store.fault = None
                else:
                    fault = {"status": int(body["status"]), "path": body.get("path")}
                    if "count" in body:
                        fault["count"] = int(body["count"])
                    if "seconds" in body:
                        fault["until"] = time.monotonic() + float(body["seconds"])
                    store.fault = fault
            return self.send_json(200, {"ok": True})
        if path == "/_test/forget":
            with store.lock:
                sid = int(body["id"])
                entry = store.schemas.pop(sid, None)
                if entry is not None:
                    store.ids_by_text.pop((entry["schemaType"], entry["schema"]), None)
            return self.send_json(200, {"ok": entry is not None})
        if path == "/_test/requests":
            return self.send_json(200, {"requests": store.requests})
        if path == "/_test/stop":
            self.send_json(200, {"ok": True})
            threading.Thread(target=self.server.shutdown, daemon=True).start()
            return None
        return self.error(404, 404, f"no test endpoint {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--user", default=None, help="require HTTP basic auth with this user")
    ap.add_argument("--password", default="", help="... and this password")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = ap.parse_args()

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    server.store = Store()
    server.user = args.user
    server.password = args.password
    server.verbose = args.verbose
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()


if __name__ == "__main__":
    main()
