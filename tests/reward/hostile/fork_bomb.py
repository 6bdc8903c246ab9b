# expect: error
# A classic fork bomb: every process forks forever. RLIMIT_NPROC on the sandbox uid makes
# fork fail (BlockingIOError); the main program dies of it and init's exit kills the rest.
import os

while True:
    os.fork()
