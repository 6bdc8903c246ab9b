# expect: error
print(open("/etc/shadow").read())
