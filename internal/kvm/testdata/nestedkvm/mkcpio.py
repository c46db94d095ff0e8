# Writes a newc cpio archive (an initramfs): mkcpio.py OUT path=src ...
# Parent directories are created; every file is mode 0755.
import os, sys
def entry(out, name, data, mode, ino):
    name_b = name.encode()+b'\0'
    hdr = '070701' + ''.join('%08X' % v for v in [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0])
    out.write(hdr.encode()); out.write(name_b)
    pad = (4 - (110 + len(name_b)) % 4) % 4; out.write(b'\0'*pad)
    out.write(data); out.write(b'\0'*((4 - len(data) % 4) % 4))
files = sys.argv[2:]
with open(sys.argv[1], 'wb') as out:
    ino = 1
    made = set()
    for spec in files:
        dst, src = spec.split('=')
        parts = dst.split('/')[:-1]
        for i in range(1, len(parts)+1):
            d = '/'.join(parts[:i])
            if d not in made:
                made.add(d); entry(out, d, b'', 0o040755, ino); ino += 1
        data = open(src, 'rb').read() if src != '-' else b''
        entry(out, dst, data, 0o100755, ino); ino += 1
    entry(out, 'TRAILER!!!', b'', 0, 0)
