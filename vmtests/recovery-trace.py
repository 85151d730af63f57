#!/usr/bin/env python3
"""Reads the tracer's output of vmtests/recovery-trace.sh and says, for each kill, what the
readers waited for: the nbd block requests in flight at the kill or issued before the next one
(when issued, requeued, completed, relative to the kill), when the killed worker exited, when
the first reply after the kill came, and for the worst kill where every process's time went
(running, runnable, sleeping, blocked in D) from the kill until the longest read ended.

usage: recovery-trace.py TRACE EVENTS LOAD_JSON... /dev/nbdN
"""
import collections, json, re, sys

trace_path, events_path = sys.argv[1:3]
loads = [json.load(open(p)) for p in sys.argv[3:-1]]
device = sys.argv[-1]
minor = int(device.removeprefix("/dev/nbd"))

line_re = re.compile(r"^\s*(.*?)-(\d+)\s+\[(\d+)\]\s+(?:\S+\s+)?([\d.]+): ([\w:]+): (.*)$")
block_re = re.compile(r"^(\d+),(\d+) (\S+) (?:\d+ )?\(.*?\) (\d+) \+ (\d+)")
stack_re = re.compile(r"^\s*.*?-(\d+)\s+\[\d+\]\s+(?:\S+\s+)?([\d.]+): <stack trace>")
kv_re = re.compile(r"(\w+)=(\S+)")

records = []
stacks = collections.defaultdict(list)  # (ts, pid) of a stack trace -> its frames
last = None
for line in open(trace_path, errors="replace"):
    if line.startswith(" => ") and last:
        stacks[last].append(line[4:].strip())
        continue
    m = stack_re.match(line)
    if m:
        last = (float(m.group(2)), int(m.group(1)))
        continue
    last = None
    m = line_re.match(line)
    if m:
        comm, pid, cpu, ts, event, rest = m.groups()
        records.append((float(ts), int(pid), comm, int(cpu), event, rest))
records.sort(key=lambda r: r[0])
kills = [(ts, rest.split()) for ts, _, _, _, event, rest in records
         if event == "tracing_mark_write" and rest.startswith("KILL")]
intervals = sorted(tuple(i) for load in loads for i in load["intervals"])

# Block requests of our device: issue -> complete, keyed by (sector, sectors, op).
open_requests, requests = {}, []
for ts, pid, comm, cpu, event, rest in records:
    if not event.startswith("block_rq_"):
        continue
    m = block_re.match(rest)
    if not m or int(m.group(1)) != 43 or int(m.group(2)) != minor:
        continue
    key = (int(m.group(4)), int(m.group(5)), m.group(3))
    if event == "block_rq_insert":
        open_requests.setdefault(key, {"key": key, "insert": ts, "issues": [], "requeues": []})
    elif event == "block_rq_issue":
        r = open_requests.setdefault(key, {"key": key, "insert": ts, "issues": [], "requeues": []})
        r["issues"].append(ts)
    elif event == "block_rq_requeue" and key in open_requests:
        open_requests[key]["requeues"].append(ts)
    elif event == "block_rq_complete" and key in open_requests:
        r = open_requests.pop(key)
        r["complete"] = ts
        requests.append(r)
for r in open_requests.values():
    r["complete"] = None
    requests.append(r)


def rel(x, t):
    return "-" if x is None else f"{(x - t) * 1000:+.0f}"


def reply_times(start, end):
    return [ts for ts, _, _, _, event, _ in records if event.endswith("nbd_header_received") and start <= ts < end]



for k, (t, words) in enumerate(kills):
    victim = int(words[2])
    horizon = min(kills[k + 1][0] if k + 1 < len(kills) else t + 5, t + 5)
    waited = [(end - max(start, t), start, end) for start, end in intervals if end > t and start < horizon]
    stall, read_start, read_end = max(waited, default=(0.0, t, t))
    exit_ts = next((ts for ts, _, _, _, event, rest in records
                    if event == "sched_process_exit" and ts >= t - 0.01 and f"pid={victim} " in rest + " "), None)
    replies = reply_times(t, horizon)
    print(f"KILL {words[1]} worker {victim}: longest read waited {stall * 1000:.0f} ms past the kill "
          f"(read {rel(read_start, t)}..{rel(read_end, t)} ms); worker exit {rel(exit_ts, t)} ms; "
          f"first reply after the kill {rel(replies[0] if replies else None, t)} ms; {len(replies)} replies before the next kill")
    involved = [r for r in requests
                if r["issues"] and r["issues"][0] < horizon and (r["complete"] is None or r["complete"] > t)]
    involved.sort(key=lambda r: -((r["complete"] or horizon) - max(r["issues"][0], t)))
    for r in involved[:6]:
        sector, count, op = r["key"]
        print(f"  {op} sector {sector} +{count}: inserted {rel(r['insert'], t)}, issued "
              f"{','.join(rel(x, t) for x in r['issues'])}, requeued [{','.join(rel(x, t) for x in r['requeues'])}], "
              f"completed {rel(r['complete'], t)} ms")




def where_time_went(start, end, only=None):
    """Per process, from start to end: running, runnable, sleeping (S), blocked (D), page
    faults and page cache insertions; the processes that did most."""
    state, since, comms = {}, {}, {}
    totals = collections.defaultdict(collections.Counter)

    def account(pid, ts):
        if pid in since and pid in state:
            a, b = max(since[pid], start), min(ts, end)
            if b > a:
                totals[pid][state[pid]] += (b - a) * 1000
        since[pid] = ts

    for ts, pid, comm, cpu, event, rest in records:
        if ts > end:
            break
        if event == "sched_switch":
            f = dict(kv_re.findall(rest.replace(" ==> ", " ")))
            prev, nxt = int(f["prev_pid"]), int(f["next_pid"])
            account(prev, ts)
            state[prev] = {"R": "runnable", "R+": "runnable", "D": "blocked(D)"}.get(f["prev_state"], "sleeping")
            comms[prev] = f["prev_comm"]
            account(nxt, ts)
            state[nxt] = "running"
            comms[nxt] = f["next_comm"]
        elif event == "sched_wakeup":
            f = dict(kv_re.findall(rest))
            p = int(f["pid"])
            account(p, ts)
            state[p] = "runnable"
            comms[p] = f["comm"]
        elif ts >= start and event == "page_fault_user":
            totals[pid]["faults"] += 1
            comms.setdefault(pid, comm)
        elif ts >= start and event == "mm_filemap_add_to_page_cache":
            totals[pid]["cache-adds"] += 1
            comms.setdefault(pid, comm)
    for pid in list(state):
        account(pid, end)
    rows = []
    for pid, c in totals.items():
        if pid == 0:
            continue
        active = c["running"] + c["runnable"] + c["blocked(D)"]
        if active >= 3 or c["faults"] or c["cache-adds"]:
            rows.append((active, pid, c))
    rows.sort(key=lambda row: -row[0])
    for active, pid, c in rows[:12]:
        parts = ", ".join(f"{name} {value:.0f}" for name, value in c.most_common() if name != "sleeping" and value)
        print(f"    {comms.get(pid, '?')}-{pid}: {parts}")


for k, (t, words) in enumerate(kills):
    horizon = min(kills[k + 1][0] if k + 1 < len(kills) else t + 5, t + 5)
    replies = reply_times(t, horizon)
    if not replies:
        continue
    print(f"KILL {words[1]}: from the kill to the first reply ({(replies[0] - t) * 1000:.0f} ms), ms (faults, cache-adds: counts):")
    where_time_went(t, replies[0])
    victim = int(words[2])
    threads = {victim} | {int(dict(kv_re.findall(rest))["child_pid"]) for ts, pid, comm, cpu, event, rest in records
                          if event == "sched_process_fork" and pid == victim}
    seen = collections.Counter()
    for (ts, pid), frames in stacks.items():
        if pid in threads and t <= ts <= replies[0]:
            seen[" < ".join(f.split("+")[0] for f in frames[:14])] += 1
    for stack, count in seen.most_common(6):
        print(f"      {count} x the dying worker left a CPU at: {stack}")
    for ts, pid, comm, cpu, event, rest in records:
        if t - 0.01 <= ts <= replies[0] and (event.startswith(("sched_process", "tracing_mark"))
                                              or event.startswith("nbd_header_received")):
            print(f"      {rel(ts, t):>7} {comm}-{pid} {event}: {rest[:100]}")
