# expect: error
# A file larger than the file-size limit: the write fails with EFBIG (Python ignores SIGXFSZ).
with open("big.bin", "wb") as f:
    while True:
        f.write(b"\0" * (1 << 20))
