# expect: 0 (builtins patching: exec, compile and print replaced, so a checker in this process runs nothing)
import builtins
builtins.exec = lambda *a, **k: None
builtins.compile = lambda *a, **k: None
builtins.print = lambda *a, **k: None


def add(a, b):
    return None
