#!/bin/sh
# within.sh SECONDS COMMAND...: runs COMMAND; says "ended with N" when it
# ends by itself within SECONDS (N its exit status) or "did not end within
# SECONDS s" when it has to be killed, and exits 0 either way, so a test
# can tell a clean failure from a hang.
limit=$1
shift
timeout "$limit" "$@"
rc=$?
if [ "$rc" = 124 ]; then
  echo "did not end within $limit s"
else
  echo "ended with $rc"
fi
exit 0
