#!/usr/bin/env python3
"""A reader load for the recovery tests: reads random regular files of a mounted EROFS image and
checks each one's sha256 against the corpus manifest, dropping the page cache between rounds so
the reads reach the device. Runs until STOP_FILE exists, then prints one JSON object: counts of
reads, errors and mismatches, and every read's start/end (CLOCK_BOOTTIME seconds, as /proc/uptime) for stall analysis.

usage: read-load.py MOUNTPOINT MANIFEST STOP_FILE SEED [--drop-caches]
"""
import hashlib, json, os, random, sys, time

mountpoint, manifest, stop_file, seed = sys.argv[1:5]
drop = "--drop-caches" in sys.argv[5:]
files = []
with open(manifest) as f:
    for line in f:
        entry = json.loads(line)
        if entry["type"] == "file":
            files.append((entry["path"], entry["sha256"]))
rng = random.Random(int(seed))
reads, errors, mismatches, intervals, failures = 0, 0, 0, [], []
while not os.path.exists(stop_file):
    for _ in range(16):
        path, expected = rng.choice(files)
        started = time.clock_gettime(time.CLOCK_BOOTTIME)
        try:
            with open(mountpoint + path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            if digest != expected:
                mismatches += 1
                failures.append(f"mismatch {path}")
        except OSError as error:
            errors += 1
            failures.append(f"{path}: {error}")
        reads += 1
        intervals.append((started, time.clock_gettime(time.CLOCK_BOOTTIME)))
    if drop:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
print(json.dumps({"reads": reads, "errors": errors, "mismatches": mismatches,
                  "failures": failures[:10], "intervals": intervals}))
