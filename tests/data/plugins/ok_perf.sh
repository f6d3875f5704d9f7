#!/bin/sh
# A well-behaved plugin: one line of text with performance data, exit OK.
echo "OK - all good | time=0.25s;1;2;0; size=1024B;;;0"
exit 0
