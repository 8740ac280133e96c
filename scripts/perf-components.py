#!/usr/bin/env python3
"""Share of authd's CPU samples per component, from `perf script` output on stdin
(scripts/bench.sh --profile; the tables in BENCHMARKS.md)."""
import sys, collections, re
# perf script output: header line then stack frames (leaf first), blank line between samples.
rules = [
 ("argon2 (hash threads)", r"argon2|blake2"),
 ("kernel: TCP send/recv, syscalls, scheduling", r"\[kernel|^\s*\S+ \w*(tcp_|sock_|__sys_|finish_task_switch|schedule|futex|do_syscall|entry_SYSCALL|_raw_spin|exit_to_user)"),
 ("sqlx + Postgres protocol", r"sqlx"),
 ("hyper/axum/tower HTTP", r"hyper::|axum::|tower::|tower_http::|http::header"),
 ("JWT / HMAC / SHA-256", r"jsonwebtoken|hmac|sha2::|Sha256|ring::"),
 ("JSON (serde)", r"serde_json|serde::"),
 ("tokio runtime", r"tokio::"),
 ("malloc/free", r"malloc|free|_int_|realloc|memalign"),
 ("memcpy", r"memmove|memcpy"),
 ("metrics", r"metrics"),
 ("tracing", r"tracing"),
]
leaf = collections.Counter(); incl = collections.Counter(); total = 0
sample=[]
def flush():
    global total
    if not sample: return
    total += 1
    frames = sample[1:]
    if not frames: return
    l = frames[0]
    cat = "other"
    # leaf category: kernel if leaf is kernel
    if "[kernel" in l or "([kernel" in l: cat = "kernel (TCP, syscalls, scheduling)"
    else:
        for name, rx in rules:
            if re.search(rx, l): cat = name; break
    leaf[cat] += 1
    seen=set()
    for f in frames:
        for name, rx in rules[2:]:
            if name not in seen and re.search(rx, f): seen.add(name)
    for s in seen: incl[s]+=1
for line in sys.stdin:
    if line.strip()=="" :
        flush(); sample=[]
    else: sample.append(line.rstrip())
flush()
print(f"samples {total}")
print("self time by component (leaf frame):")
for k,v in leaf.most_common(): print(f"  {100*v/total:5.1f}%  {k}")
print("inclusive (a frame of it anywhere on the stack):")
for k,v in incl.most_common(): print(f"  {100*v/total:5.1f}%  {k}")
