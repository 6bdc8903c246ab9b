# expect: ok
# Prints every environment it can reach: its own and any other process's.
import os

print(dict(os.environ))
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            print(pid, open(f"/proc/{pid}/environ", "rb").read())
        except OSError as exc:
            print(pid, "denied:", type(exc).__name__)
