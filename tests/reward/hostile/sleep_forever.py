# expect: timeout
# Uses no CPU, so only the wall-clock limit can end it.
import time

print("going to sleep", flush=True)
time.sleep(3600)
