#!/bin/sh
# Labels with spaces must be quoted; the split keeps them whole.
echo "OK - interfaces |'eth0 in'=100c;;;0 'eth0 out'=200c;;;0 plain=1 'it''s'=3"
exit 0
