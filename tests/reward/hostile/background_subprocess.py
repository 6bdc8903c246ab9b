# expect: ok
import subprocess
import sys

subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True)
subprocess.Popen(["sleep", "3600"])
print("spawned")
