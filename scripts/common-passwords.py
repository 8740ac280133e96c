#!/usr/bin/env python3
"""Regenerate assets/common-passwords.txt from the zxcvbn crate's password
frequency list: the first 10 000 entries of 8 or more characters (shorter ones
are refused by the length rule anyway), lower-cased, one per line.

Usage: python3 scripts/common-passwords.py PATH/TO/zxcvbn-3.1.1/src/frequency_lists.rs
(`cargo fetch` a project depending on zxcvbn 3.1.1, or unpack its .crate, to get the file.)
"""
import re
import sys

src = open(sys.argv[1], encoding="utf-8").read()
passwords = re.search(r'const PASSWORDS: &str = "(.*?)";', src, re.S).group(1).split(",")
picked = [p.lower() for p in passwords if len(p) >= 8][:10000]
assert len(picked) == 10000 and len(set(picked)) == 10000
with open("assets/common-passwords.txt", "w", encoding="utf-8") as out:
    out.write("\n".join(picked) + "\n")
