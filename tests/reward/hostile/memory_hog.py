# expect: memory
x = bytearray(16 << 30)
