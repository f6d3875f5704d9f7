#!/bin/sh
# Writes 100 MB to stdout, then exits CRITICAL.
head -c 100000000 /dev/zero | tr '\0' 'x'
exit 2
