# expect: error
import socket

socket.getaddrinfo("localhost", 80)
socket.create_connection(("localhost", @@PORT@@), timeout=1)
