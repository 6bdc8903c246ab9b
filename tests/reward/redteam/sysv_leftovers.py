# expect: 0 (SysV shared memory, semaphores and message queues left behind for a later sample or the host)
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
IPC_PRIVATE, IPC_CREAT = 0, 0o1000
for key in (IPC_PRIVATE, 0x7A4D0001):
    libc.shmget(key, 1 << 16, IPC_CREAT | 0o666)
    libc.semget(key, 1, IPC_CREAT | 0o666)
    libc.msgget(key, IPC_CREAT | 0o666)


def add(a, b):
    return None
