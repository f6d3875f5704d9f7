#!/bin/sh
# Multi-line output in the plugin API layout: perfdata on the first line, long text,
# then a second '|' after which every line is performance data.
echo "DISK WARNING - free space: / 3326 MB (5%) | /=2643MB;5948;5958;0;5968"
echo "/ 15272 MB (77%);"
echo "/boot 68 MB (69%); | /boot=68MB;88;93;0;98"
echo "/home=69357MB;253404;253409;0;253414"
echo "'/var log'=818MB;970;975;0;980"
exit 1
