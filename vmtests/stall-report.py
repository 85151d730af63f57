#!/usr/bin/env python3
"""Summarises a recovery run: the reader loads' counts, and for every event (a kill, a reattach,
an upgrade; one /proc/uptime time per line of EVENTS) the stall it caused: the longest time a read
in flight at the event, or started before the next event, waited past the event.

usage: stall-report.py NAME EVENTS LOAD_OUTPUT...
Prints a JSON object and exits 0; the caller asserts on it.
"""
import json, statistics, sys

name, events_file = sys.argv[1:3]
loads = [json.load(open(path)) for path in sys.argv[3:]]
events = [float(line.split()[0]) for line in open(events_file) if line.strip()]
intervals = sorted(tuple(i) for load in loads for i in load["intervals"])
stalls = []
for k, t in enumerate(events):
    horizon = min(events[k + 1] if k + 1 < len(events) else t + 5, t + 5)
    waited = [end - max(start, t) for start, end in intervals if end > t and start < horizon]
    stalls.append(max(waited, default=0.0))
event_times = set()
quiet = [end - start for start, end in intervals
         if not any(start - 5 <= t <= end + 0.1 for t in events)]
summary = {
    "name": name,
    "events": len(events),
    "reads": sum(load["reads"] for load in loads),
    "errors": sum(load["errors"] for load in loads),
    "mismatches": sum(load["mismatches"] for load in loads),
    "failures": [f for load in loads for f in load["failures"]][:10],
    "stall_median_ms": round(statistics.median(stalls) * 1000) if stalls else None,
    "stall_worst_ms": round(max(stalls) * 1000) if stalls else None,
    "stalls_ms": [round(s * 1000) for s in stalls],
    "quiet_read_median_ms": round(statistics.median(quiet) * 1000, 1) if quiet else None,
}
print(json.dumps(summary))
