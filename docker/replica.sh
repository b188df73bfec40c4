#!/usr/bin/env bash
# The "scale" profile's read replica: copy the primary once (pg_basebackup -R writes the
# standby settings), then run as a hot standby that streams the primary's WAL.
set -euo pipefail
if [ ! -s "${PGDATA}/PG_VERSION" ]; then
    until pg_isready -h postgres -U "${POSTGRES_USER}"; do sleep 1; done
    pg_basebackup -h postgres -U "${POSTGRES_USER}" -D "${PGDATA}" -R -X stream -c fast
fi
chmod 700 "${PGDATA}"
exec postgres -D "${PGDATA}"
