# expect: timeout
# Ignores the CPU soft-limit signal; the hard limit's SIGKILL still ends it.
import signal

signal.signal(signal.SIGXCPU, signal.SIG_IGN)
while True:
    pass
