#!/bin/sh
# Under mpirun: rank 1 stops (SIGSTOP) two seconds into the run without
# dying, so only the collectives can tell; every rank runs "$@".
if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then
  ( sleep 2; kill -STOP $$ ) &
fi
exec "$@"
