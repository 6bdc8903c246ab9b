# expect: timeout
# A fork bomb that survives failed forks and keeps every process spinning.
import os

while True:
    try:
        os.fork()
    except OSError:
        pass
