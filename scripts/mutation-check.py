#!/usr/bin/env python3
"""Checks that the room's unit and property tests guard the logic they claim
to: breaks that logic one way at a time (a "mutant"), runs the tests of the
part it lives in, and reports which tests failed. Every mutant must be
caught; the script exits 1 if one is not.

    python3 scripts/mutation-check.py              # every part
    python3 scripts/mutation-check.py sequencer    # only some parts

It edits the source file in place and puts it back after each run, so it
refuses to start unless the files it mutates are committed (an interrupted
run is undone with `git checkout -- src/actors/room`). Takes a few minutes:
one incremental build per mutant.
"""

import os
import subprocess
import sys

ROOM = "src/actors/room/"
# proptest saves the inputs that made a property fail here; a mutant's
# failures are not regressions of the real code, so they are not kept.
REGRESSIONS = "proptest-regressions"


def snapshot(root):
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                files[path] = f.read()
    return files


def restore(root, before):
    for path in snapshot(root):
        if path not in before:
            os.remove(path)
    for path, content in before.items():
        with open(path, "wb") as f:
            f.write(content)
    for folder, _, _ in sorted(os.walk(root), reverse=True):
        if not os.listdir(folder):
            os.rmdir(folder)

# (file, original text, mutated text, part whose tests run, what it breaks)
MUTANTS = [
    ("sequencer.rs", "if message.id >= next {", "if message.id >= next.prev() {",
     "sequencer", "late duplicates are not dropped"),
    ("sequencer.rs", "while let Some(entry) = self.waiting.remove(&next) {",
     "while let Some((&id, _)) = self.waiting.iter().next() { "
     "let entry = self.waiting.remove(&id).unwrap(); next = id;",
     "sequencer", "whatever waits goes out, not just the run at next"),
    ("sequencer.rs", "                self.gap = Gap::Filling;\n", "",
     "sequencer", "a due gap is handed out again while its read is in flight"),
    ("sequencer.rs", "Gap::DueAt(at) if at <= now => {", "Gap::DueAt(_) => {",
     "sequencer", "a gap is filled before the timeout"),
    ("sequencer.rs", "Gap::Closed => Gap::DueAt(now + self.gap_timeout),", "Gap::Closed => Gap::Closed,",
     "sequencer", "a gap never becomes due"),
    ("sequencer.rs", "self.waiting.entry(message.id).or_insert((message, author));",
     "self.waiting.insert(message.id, (message, author));",
     "sequencer", "a duplicate replaces the copy with the author"),
    ("fanout.rs", "Some((_, mine)) => wire.extend_from_slice(mine),",
     "Some(_) => wire.extend_from_slice(&shared[range.clone()]),",
     "fanout", "the author's ref is not echoed"),
    ("fanout.rs", "match own.iter_mut().find(|(s, _)| *s == socket_id) {",
     "match own.iter_mut().find(|(s, _)| *s != socket_id) {",
     "fanout", "the refs of two authors are mixed up"),
    ("members.rs", ".partition_point(|m| m.join_seq <= entry.join_seq);", ".len();",
     "members", "members are listed in arrival order"),
    ("steps.rs", "        if queue.running {\n            return;\n        }\n", "",
     "steps", "steps run concurrently"),
    ("history.rs", "        if self.ring.len() >= self.keep {", "        if self.ring.len() > self.keep {",
     "history", "the history keeps one message too many"),
    ("pending.rs", "let n = self.messages.len().min(max);", "let n = self.messages.len();",
     "pending", "a batch is not bounded"),
]


def main() -> int:
    only = set(sys.argv[1:])
    dirty = subprocess.run(["git", "status", "--porcelain", "--", ROOM],
                           capture_output=True, text=True, check=True).stdout
    if dirty.strip():
        print(f"uncommitted changes under {ROOM}; commit or stash them first", file=sys.stderr)
        return 2
    escaped = 0
    saved = snapshot(REGRESSIONS)
    for name, old, new, part, what in MUTANTS:
        if only and part not in only:
            continue
        path = ROOM + name
        with open(path) as f:
            src = f.read()
        if src.count(old) != 1:
            print(f"{path}: the text to mutate is gone or not unique: {old!r}", file=sys.stderr)
            return 2
        with open(path, "w") as f:
            f.write(src.replace(old, new))
        try:
            run = subprocess.run(["cargo", "test", "--lib", f"actors::room::{part}::"],
                                 capture_output=True, text=True, timeout=1800)
        finally:
            with open(path, "w") as f:
                f.write(src)
            restore(REGRESSIONS, saved)
        out = run.stdout + run.stderr
        if "could not compile" in out:
            verdict = "does not compile (fix the mutant)"
            escaped += 1
        elif run.returncode != 0:
            failed = [line.split()[1].rsplit("::", 1)[-1] for line in out.splitlines()
                      if line.startswith("test ") and line.endswith("FAILED")]
            verdict = "caught by " + ", ".join(failed)
        else:
            verdict = "NOT CAUGHT"
            escaped += 1
        print(f"{part:10} {what:58} {verdict}", flush=True)
    return 1 if escaped else 0


if __name__ == "__main__":
    sys.exit(main())
