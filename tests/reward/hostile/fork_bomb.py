# expect: error
# A fork bomb: every process forks as fast as it can; those that hit the limit hold their
# slot (sleep) so the program's own next fork must fail. RLIMIT_NPROC on the sandbox uid
# makes fork fail (BlockingIOError); the program dies of it and init's exit kills the rest.
import os
import time

main = os.getpid()
while True:
    try:
        os.fork()
    except OSError:
        if os.getpid() == main:
            raise
        time.sleep(3600)
