#!/bin/sh
# Hangs after forking a child that also hangs; both pids go to the file named by $1.
# The child ignores SIGTERM, so only the SIGKILL to the process group ends it.
(trap '' TERM; echo "child $(sh -c 'echo $PPID')" >> "$1"; exec sleep 300) &
echo "parent $$" >> "$1"
echo "started"
sleep 300
