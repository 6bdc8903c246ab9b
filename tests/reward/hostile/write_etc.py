# expect: error
with open("/etc/tandem-pwned", "w") as f:
    f.write("pwned")
