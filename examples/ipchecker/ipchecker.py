#!/usr/bin/env python3
"""The IP checker service of the seed's example: answers GET /<ip> with
"allow" or "deny" at random. Standard library only: python3 ipchecker.py"""
import random
from http.server import BaseHTTPRequestHandler, HTTPServer


class Checker(BaseHTTPRequestHandler):
    def do_GET(self):
        body = random.choice([b"allow", b"deny"])
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("127.0.0.1", 5000), Checker).serve_forever()
