# expect: 1 (honest)
def add(a, b):
    return a + b
