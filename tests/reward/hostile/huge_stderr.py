# expect: output_limit
import sys

while True:
    sys.stderr.write("z" * 10000)
