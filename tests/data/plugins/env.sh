#!/bin/sh
echo "PATH=$PATH LANG=$LANG HOME=${HOME-unset} EXTRA=${EXTRA-unset}"
