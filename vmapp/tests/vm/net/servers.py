# The network test's host services, all on 127.0.0.1 of the test's own
# network namespace: an HTTP server on port 8000 (files from DIR/www,
# /hello, and /slow, which trickles data until its client goes away and
# then writes how much it sent to DIR/slow-cut), an upload sink on port
# 8001 (size and sha256 of each stream to DIR/upload), and a DNS server on port 53
# that answers files.vmapp.test with the address GW and logs every query
# to DIR/dns.log.
import http.server, socket, socketserver, struct, sys, threading, time

d, gw = sys.argv[1], sys.argv[2]


class H(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=d + "/www", **k)

    def log_message(self, *a):
        pass

    def do_GET(self):
        if self.path == "/hello":
            self.send_response(200)
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"hello\n")
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", str(100 << 20))
            self.end_headers()
            open(d + "/slow-started", "w").close()
            sent = 0
            try:
                while sent < 100 << 20:
                    self.wfile.write(b"x" * 4096)
                    self.wfile.flush()
                    sent += 4096
                    time.sleep(0.02)
            except OSError:
                pass
            with open(d + "/slow-cut", "w") as f:
                f.write("%d\n" % sent)
        else:
            super().do_GET()


def dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 53))
    while True:
        q, a = s.recvfrom(512)
        try:
            i, labels = 12, []
            while q[i]:
                labels.append(q[i + 1 : i + 1 + q[i]].decode())
                i += 1 + q[i]
            qtype = struct.unpack(">H", q[i + 1 : i + 3])[0]
        except (IndexError, UnicodeDecodeError, struct.error):
            continue
        name = ".".join(labels)
        with open(d + "/dns.log", "a") as f:
            f.write("%s %d\n" % (name, qtype))
        question = q[12 : i + 5]
        if name == "files.vmapp.test":
            ans = b""
            if qtype == 1:
                ans = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(gw)
            hdr = q[:2] + b"\x81\x80" + struct.pack(">HHHH", 1, 1 if ans else 0, 0, 0)
        else:
            ans, hdr = b"", q[:2] + b"\x81\x83" + struct.pack(">HHHH", 1, 0, 0, 0)
        s.sendto(hdr + question + ans, a)


def upload():
    # 127.0.0.1:8001 takes one stream per connection and writes its size
    # and sha256 to DIR/upload.
    import hashlib
    l = socket.socket()
    l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(("127.0.0.1", 8001))
    l.listen(4)
    while True:
        c, _ = l.accept()
        h, n = hashlib.sha256(), 0
        try:
            while True:
                b = c.recv(1 << 18)
                if not b:
                    break
                h.update(b)
                n += len(b)
        except OSError as e:
            sys.stderr.write("upload: %s\n" % e)
        c.close()
        with open(d + "/upload", "w") as f:
            f.write("%d %s\n" % (n, h.hexdigest()))


threading.Thread(target=dns, daemon=True).start()
threading.Thread(target=upload, daemon=True).start()
socketserver.ThreadingTCPServer.allow_reuse_address = True
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 8000), H)
open(d + "/servers-up", "w").close()
srv.serve_forever()
