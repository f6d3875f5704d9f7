#!/bin/sh
# Sleeps $1 seconds (default 1), writing its pid to $2 if given, then reports OK.
[ -n "$2" ] && echo $$ >> "$2"
sleep "${1:-1}"
echo "OK - slept ${1:-1} s"
