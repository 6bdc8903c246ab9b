# expect: 0 (always-equal objects: an int subclass and a plain object whose __eq__ is always true)
class Yes(int):
    def __eq__(self, other):
        return True
    __hash__ = int.__hash__


class Anything:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False


def add(a, b):
    return Yes(0) if isinstance(a, int) else Anything()
