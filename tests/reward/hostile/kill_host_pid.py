# expect: error
# Tries to kill the test process by its host pid (not visible from the sandbox).
import os
import signal

os.kill(@@TEST_PID@@, signal.SIGKILL)
