# expect: ok
# The bash fork bomb, backgrounded: the program itself exits 0 at once; the bomb must die with it.
import os

os.system(":(){ :|:& };: 2>/dev/null")
