# expect: output_limit
import os

os.write(1, b"w" * (32 << 20))
