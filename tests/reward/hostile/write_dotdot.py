# expect: error
# Relative escape from the working directory.
with open("../../../../root/pwned", "w") as f:
    f.write("pwned")
