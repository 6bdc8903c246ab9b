# expect: error
import os

os.setuid(0)
