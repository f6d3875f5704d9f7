#!/bin/sh
# Prints a line, then dies from SIGKILL.
echo "about to die"
kill -9 $$
