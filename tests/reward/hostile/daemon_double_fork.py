# expect: ok
# Detaches a daemon (double fork + setsid) that would run on after the program exits.
import os
import time

if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        while True:
            time.sleep(0.1)
    os._exit(0)
print("parent done")
