#!/usr/bin/env python3
# How long a SIGKILLed process takes to let its descriptors go, against how long until its
# parent can reap it (SIGCHLD): the supervisor recovers at the first (issue 18). Runs BINARY
# (our `erofs`, serving IMAGE on a Unix socket) 8 times, holding one end of a socketpair;
# prints, per kill, when the other end saw EOF and when the pidfd became readable.
#   vmtests/run.sh --kernel 6.1 --timeout 280 -- python3 Benchmarks/vm/exit-order.py .build/release/erofs IMAGE

import os, select, signal, socket, subprocess, sys, time

binary, image = sys.argv[1], sys.argv[2]
res = []
for i in range(8):
    a, b = socket.socketpair()
    path = f"/tmp/exp{i}.sock"
    try: os.unlink(path)
    except FileNotFoundError: pass
    p = subprocess.Popen([binary, "serve", "--unix", path, image], pass_fds=[b.fileno()],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b.close()
    for _ in range(500):
        if os.path.exists(path): break
        time.sleep(0.01)
    time.sleep(0.3)
    pfd = os.pidfd_open(p.pid)
    t0 = time.monotonic()
    os.kill(p.pid, signal.SIGKILL)
    poller = select.poll()
    poller.register(a.fileno(), select.POLLIN | select.POLLHUP)
    poller.register(pfd, select.POLLIN)
    teof = tpid = None
    while teof is None or tpid is None:
        for fd, ev in poller.poll(5000):
            now = time.monotonic()
            if fd == a.fileno() and teof is None: teof = now; poller.unregister(fd)
            if fd == pfd and tpid is None: tpid = now; poller.unregister(fd)
    p.wait()
    res.append(((teof - t0) * 1000, (tpid - t0) * 1000))
    a.close(); os.close(pfd)
for e, w in res: print(f"{os.path.basename(os.path.dirname(os.path.dirname(binary)))} eof {e:7.1f} ms  pidfd {w:7.1f} ms")
