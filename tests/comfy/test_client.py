"""ComfyUI's HTTP client: kept-alive connections, and a connection the server closed while it
was idle never costs a call."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from services.comfy.client import ComfyClient, ComfyUnreachable


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        server = self.server
        server.connections.add(self.client_address)
        body = json.dumps({"queue_running": [], "queue_pending": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        # a keep-alive answer, and then the server drops the connection (an idle timeout)
        self.close_connection = server.drop_after_answer

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.connections, httpd.drop_after_answer = set(), False
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_calls_one_after_another_share_one_connection(server):
    client = ComfyClient(f"http://127.0.0.1:{server.server_port}")
    for _ in range(5):
        assert client.queue() == {"queue_running": [], "queue_pending": []}
    assert len(server.connections) == 1


def test_a_connection_the_server_closed_while_idle_is_replaced_not_failed(server):
    server.drop_after_answer = True
    client = ComfyClient(f"http://127.0.0.1:{server.server_port}")
    for _ in range(3):
        assert client.queue() == {"queue_running": [], "queue_pending": []}
    assert len(server.connections) == 3


def test_a_server_that_is_gone_is_unreachable_not_a_traceback():
    with ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as httpd:
        port = httpd.server_port
    client = ComfyClient(f"http://127.0.0.1:{port}")
    with pytest.raises(ComfyUnreachable, match=r"did not answer GET /queue \(ConnectionRefusedError\)"):
        client.queue()
    assert not client.ready(timeout=0.5)
