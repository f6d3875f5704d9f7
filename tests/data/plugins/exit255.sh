#!/bin/sh
echo "something went badly wrong"
exit 255
