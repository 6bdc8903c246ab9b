# expect: error
# Tries to create a file in a host directory (the test substitutes a real path).
with open("@@HOST_DIR@@/pwned.txt", "w") as f:
    f.write("pwned")
