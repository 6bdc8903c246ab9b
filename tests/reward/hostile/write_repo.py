# expect: error
# The repository is hidden and read-only; writing into it must fail.
with open("@@REPO@@/PWNED", "w") as f:
    f.write("pwned")
