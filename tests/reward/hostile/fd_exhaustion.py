# expect: error
files = []
while True:
    files.append(open("/dev/null"))
