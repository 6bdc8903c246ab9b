# expect: error
# Connects to a TCP server the test listens with on 127.0.0.1.
import socket

socket.create_connection(("127.0.0.1", @@PORT@@), timeout=1).sendall(b"exfiltrated")
