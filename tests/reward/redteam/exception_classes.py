# expect: 0 (exception-class patching: a failed check raises nothing the checker recognises)
import builtins
class Never(BaseException):
    pass
for name in ("AssertionError", "Exception", "TypeError", "ValueError", "NameError"):
    setattr(builtins, name, Never)


def add(a, b):
    raise Never()
