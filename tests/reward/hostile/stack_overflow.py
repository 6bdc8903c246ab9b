# expect: killed
# Lifts Python's recursion guard so C-level recursion (the json decoder) overflows the C
# stack: SIGSEGV.
import json
import sys

sys.setrecursionlimit(10**9)
json.loads("[" * 10**6 + "]" * 10**6)
