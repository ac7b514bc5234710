#!/bin/sh
# Under mpirun: rank 1 stops (SIGSTOP) without dying, so only the
# collectives can tell; every rank runs "$@" (kiln-run and its arguments).
# The stop comes a second after kiln-run has loaded and opened its session,
# which it marks by sending a non-leader rank's stdout to /dev/null: however
# loaded the machine, the other rank is then in a step's collective, not
# still starting up (MPI_Init would wait for a stopped peer for ever).
if [ "$OMPI_COMM_WORLD_RANK" = 1 ]; then
  (
    while [ "$(readlink /proc/$$/fd/1)" != /dev/null ]; do
      [ -d /proc/$$ ] || exit 0
      sleep 0.1
    done
    sleep 1
    kill -STOP $$
  ) &
fi
exec "$@"
